#!/usr/bin/env bash
# test_caption_html.sh - the review page of `idefics caption --html`, opened in
# headless Chromium (Debian's chromium):
#   test_caption_html.sh IDEFICS_BIN MODEL.idfx IMAGES_DIR SCRATCH_DIR
# The page, after its script ran (--dump-dom), has one <figure> per record of
# OUT; each thumbnail's alt equals its record's caption; every textarea has a
# <label for>, every radio sits in a label inside a fieldset with a legend;
# nothing is loaded from outside the file. A screenshot is saved as
# SCRATCH_DIR/review.png. Skips (77) without chromium or the model.
set -u
bin=$1 model=$2 imgs=$3 tmp=$4
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chrome" ] || { echo "SKIP: chromium not installed (Debian package chromium)"; exit 77; }
rm -rf "$tmp"
mkdir -p "$tmp/photos"
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }

i=0
for f in $(ls "$imgs"/*.png | head -n 5); do
    i=$((i + 1))
    cp "$f" "$tmp/photos/photo$i.png"
done
cp "$tmp/photos/photo1.png" "$tmp/photos/with <tag> & \"quotes\".png"
head -c 50 "$tmp/photos/photo2.png" >"$tmp/photos/broken.png"
"$bin" caption -m "$model" -t 1 "$tmp/photos" -o "$tmp/out.tsv" --html "$tmp/review.html" 2>"$tmp/err"
rc=$?
cat "$tmp/err"
check '[ $rc -eq 1 ]' "exit $rc (expected 1: one broken image)"
check '[ -s "$tmp/review.html" ]' "the page is written"
records=$(($(wc -l <"$tmp/out.tsv") - 1))
check '! grep -Eiq "(src|href)=\"(https?:)?//" "$tmp/review.html"' "nothing loaded from outside the page"

flags="--headless --no-sandbox --disable-gpu --disable-extensions --no-first-run --user-data-dir=$tmp/profile"
timeout 120 "$chrome" $flags --dump-dom "file://$tmp/review.html" >"$tmp/dom.html" 2>"$tmp/chrome.err"
check '[ -s "$tmp/dom.html" ]' "chromium rendered the page ($(tail -n 3 "$tmp/chrome.err"))"
figs=$(grep -o "<figure" "$tmp/dom.html" | wc -l)
check '[ "$figs" -eq "$records" ]' "one figure per record ($figs figures, $records records)"
# each ok record's caption is its thumbnail's alt (HTML-escaped as the page writes it)
n_alt=0
# (awk, not read: a tab is IFS whitespace, so read would merge the empty columns)
while IFS= read -r caption; do
    esc=$(printf '%s' "$caption" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g')
    if grep -qF "alt=\"$esc\"" "$tmp/dom.html"; then n_alt=$((n_alt + 1)); else echo "FAIL: no img with alt=\"$esc\""; fail=1; fi
done < <(awk -F'\t' 'NR > 1 && $3 == "ok" { print $5 }' "$tmp/out.tsv")
check '[ "$n_alt" -eq $((records - 1)) ]' "$n_alt alt texts match the captions (expected $((records - 1)))"
imgs_n=$(grep -o "<img " "$tmp/dom.html" | wc -l)
alts_n=$(grep -o "<img [^>]*alt=\"[^\"]" "$tmp/dom.html" | wc -l)
check '[ "$imgs_n" -eq "$alts_n" ] && [ "$imgs_n" -eq $((records - 1)) ]' "every image has a non-empty alt ($alts_n of $imgs_n)"
ta=$(grep -o "<textarea id=\"c[0-9]*\"" "$tmp/dom.html" | wc -l)
lab=$(grep -o "<label for=\"c[0-9]*\"" "$tmp/dom.html" | wc -l)
check '[ "$ta" -eq "$records" ] && [ "$lab" -eq "$ta" ]' "every caption box has a label ($lab labels, $ta boxes)"
check '[ "$(grep -o "<legend>" "$tmp/dom.html" | wc -l)" -eq "$records" ]' "every review fieldset has a legend"
check '[ "$(grep -o "<label><input type=\"radio\"" "$tmp/dom.html" | wc -l)" -eq $((2 * records)) ]' "every radio is labelled"
check '! grep -q "tabindex=\"-" "$tmp/dom.html"' "no control is taken out of the keyboard order"
check 'grep -q "<button type=\"button\" id=\"export\">" "$tmp/dom.html"' "export button"
check 'grep -qF "with &lt;tag&gt; &amp; &quot;quotes&quot;.png" "$tmp/dom.html"' "a file name with markup is escaped"

timeout 120 "$chrome" $flags --hide-scrollbars --window-size=1280,1000 --screenshot="$tmp/review.png" \
    "file://$tmp/review.html" >/dev/null 2>>"$tmp/chrome.err"
check '[ "$(head -c 8 "$tmp/review.png" 2>/dev/null | od -An -tx1 | tr -d " \n")" = 89504e470d0a1a0a ]' "screenshot saved"
echo "FIGURE: review page $tmp/review.html: $figs figures, $n_alt alt texts checked; screenshot $tmp/review.png"

[ $fail -eq 0 ] && echo "caption_html: all checks passed"
exit $fail
