// app.js - the page at / of `idefics serve` (tools/server/). No framework: it
// keeps the conversation as OpenAI messages and streams answers from
// /v1/chat/completions. The finished answer is announced through #live.
'use strict';
const $ = (id) => document.getElementById(id);
let messages = [];      // the conversation so far, as sent to the server
let image = null;       // data: URI of the chosen image, sent with the next question
let controller = null;  // aborts the running request (Stop)

function setStatus(text, isError) {
  $('status').textContent = text;
  $('status').classList.toggle('error', !!isError);
}

function headers() {
  const h = { 'Content-Type': 'application/json' };
  const k = $('key').value.trim();
  if (k) h.Authorization = 'Bearer ' + k;
  return h;
}

function useImage(dataUri, name) {
  image = dataUri;
  $('preview').src = dataUri;
  $('preview').alt = 'Chosen image: ' + name;
  $('preview').hidden = false;
  setStatus('Image ' + name + ' chosen. It goes with your next question.');
}

function readFile(file) {
  return new Promise((resolve) => {
    if (!file || !file.type.startsWith('image/')) { setStatus('That is not an image file.', true); resolve(); return; }
    const r = new FileReader();
    r.onload = () => { useImage(r.result, file.name); resolve(); };
    r.onerror = () => { setStatus('Could not read ' + file.name, true); resolve(); };
    r.readAsDataURL(file);
  });
}

// The bundled sample, converted without FileReader so that no idle gap is
// left between its fetch and the question (headless tests use virtual time).
async function useSample() {
  const bytes = new Uint8Array(await (await fetch('sample.png')).arrayBuffer());
  let bin = '';
  for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
  useImage('data:image/png;base64,' + btoa(bin), 'sample.png');
}

function addEntry(who, text) {
  const li = document.createElement('li');
  const w = document.createElement('span');
  w.className = 'who';
  w.textContent = who + ': ';
  const t = document.createElement('span');
  t.textContent = text;
  li.append(w, t);
  $('conv').append(li);
  return t;
}

function busy(on) {
  $('send').disabled = on;
  $('stop').disabled = !on;
}

async function ask(question) {
  const content = [{ type: 'text', text: question }];
  if (image) content.push({ type: 'image_url', image_url: { url: image } });
  const userMsg = { role: 'user', content };
  addEntry('You', question + (image ? ' (with the image)' : ''));
  const out = addEntry('Answer', '');
  out.parentElement.setAttribute('aria-busy', 'true');
  busy(true);
  setStatus('Answering…');
  controller = new AbortController();
  let answer = '';
  try {
    const resp = await fetch('v1/chat/completions', {
      method: 'POST', headers: headers(), signal: controller.signal,
      body: JSON.stringify({ messages: messages.concat([userMsg]), stream: true,
        max_tokens: Number($('maxtok').value) || 128, temperature: Number($('temp').value) || 0 }),
    });
    if (!resp.ok) {
      let msg = resp.status + ' ' + resp.statusText;
      try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') continue;
        const j = JSON.parse(data);
        if (j.error) throw new Error(j.error.message);
        const d = j.choices && j.choices[0] && j.choices[0].delta;
        if (d && d.content) { answer += d.content; out.textContent = answer; }
      }
    }
    messages.push(userMsg, { role: 'assistant', content: answer });
    image = null; // sent once; follow-ups refer to it through the conversation
    setStatus('Done. Ask a follow-up question, or choose another image.');
    $('live').textContent = 'Answer: ' + (answer || '(empty)');
  } catch (e) {
    const stopped = e.name === 'AbortError';
    out.textContent = answer + (stopped ? ' [stopped]' : '');
    setStatus(stopped ? 'Stopped.' : 'Error: ' + e.message, !stopped);
    $('live').textContent = stopped ? 'Stopped.' : 'Error: ' + e.message;
  } finally {
    out.parentElement.removeAttribute('aria-busy');
    controller = null;
    busy(false);
    $('question').focus();
  }
}

function init() {
  $('file').addEventListener('change', (e) => readFile(e.target.files[0]));
  $('sample').addEventListener('click', useSample);
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    readFile(e.dataTransfer.files[0]);
  });
  $('ask').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = $('question').value.trim();
    if (!q || controller) return;
    $('question').value = '';
    ask(q);
  });
  $('question').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('ask').requestSubmit(); }
  });
  $('stop').addEventListener('click', () => controller && controller.abort());
  $('reset').addEventListener('click', () => {
    messages = []; image = null;
    $('conv').textContent = ''; $('preview').hidden = true;
    setStatus('New conversation. Choose an image and ask.');
    $('question').focus();
  });
  fetch('health').then((r) => r.json()).then((j) => {
    setStatus(j.status === 'ok' ? 'Ready: model ' + j.model + '. Choose an image and ask.' : 'The model is still loading.');
  }).catch(() => setStatus('The server does not answer.', true));
  // Automation (the page test): ?sample=1&ask=QUESTION asks about the sample image.
  const p = new URLSearchParams(location.search);
  if (p.get('ask')) {
    (p.get('sample') ? useSample() : Promise.resolve()).then(() => ask(p.get('ask')));
  }
}
document.addEventListener('DOMContentLoaded', init);
