/*
 * caption_xmp.c - XMP sidecars for `idefics caption --sidecar xmp`.
 *
 * The caption goes where IPTC Photo Metadata 2021.1 puts alt text:
 * Iptc4xmpCore:AltTextAccessibility, a lang-alt (rdf:Alt) whose x-default
 * entry holds the text. digiKam, Lightroom and exiftool read it there.
 *
 * An existing sidecar is merged into, never clobbered: it is parsed with
 * libxml2 (no network, no entity expansion, no DTD loading), only the
 * x-default entry of AltTextAccessibility is set (other languages stay), and
 * xmp:CreatorTool is added only when absent (it names the tool that made the
 * image; an earlier idefics-edge entry is updated); when the image has its
 * own, an xmpMM:History event names idefics-edge and the model instead. Every other element,
 * attribute, namespace and processing instruction is kept as it was. A file
 * that is not XML, has no rdf:RDF, or cannot be read is left untouched and the
 * caller writes an error record. The new content is written to NAME.tmp.PID,
 * synced and renamed over NAME, so a crash never leaves half a sidecar.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "caption.h"
#include "idefics.h"

#if CAPTION_HAVE_XML2
#include <libxml/parser.h>
#include <libxml/tree.h>

#define NS_X "adobe:ns:meta/"
#define NS_RDF "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
#define NS_IPTC "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
#define NS_XMP "http://ns.adobe.com/xap/1.0/"
#define NS_XML "http://www.w3.org/XML/1998/namespace"
#define NS_XMPMM "http://ns.adobe.com/xap/1.0/mm/"
#define NS_STEVT "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
#define MAX_SIDECAR_BYTES (16 << 20)

bool cap_xmp_available(void) { return true; }

static bool is_el(const xmlNode *n, const char *ns, const char *name) {
    return n && n->type == XML_ELEMENT_NODE && n->ns && n->ns->href && !strcmp((const char *)n->ns->href, ns) &&
           !strcmp((const char *)n->name, name);
}

static xmlNode *find_el(xmlNode *n, const char *ns, const char *name) {
    for (; n; n = n->next) {
        if (is_el(n, ns, name)) return n;
        xmlNode *c = find_el(n->children, ns, name);
        if (c) return c;
    }
    return NULL;
}

static xmlNs *ns_for(xmlNode *el, const char *href, const char *prefix) {
    xmlNs *ns = xmlSearchNsByHref(el->doc, el, (const xmlChar *)href);
    return ns ? ns : xmlNewNs(el, (const xmlChar *)href, (const xmlChar *)prefix);
}

/* Sets the x-default entry of a lang-alt property element. */
static bool set_lang_alt(xmlNode *prop, xmlNs *rdf, const char *text) {
    xmlNode *alt = NULL;
    for (xmlNode *c = prop->children; c; c = c->next)
        if (is_el(c, NS_RDF, "Alt")) alt = c;
    if (!alt) {
        /* a plain literal or another structure: replace with a lang-alt */
        xmlNode *c = prop->children;
        while (c) {
            xmlNode *next = c->next;
            xmlUnlinkNode(c);
            xmlFreeNode(c);
            c = next;
        }
        if (!(alt = xmlNewChild(prop, rdf, (const xmlChar *)"Alt", NULL))) return false;
    }
    xmlNode *li = NULL;
    for (xmlNode *c = alt->children; c && !li; c = c->next) {
        if (!is_el(c, NS_RDF, "li")) continue;
        xmlChar *lang = xmlGetNsProp(c, (const xmlChar *)"lang", (const xmlChar *)NS_XML);
        if (lang && !strcmp((const char *)lang, "x-default")) li = c;
        xmlFree(lang);
    }
    if (!li) { /* x-default comes first in a lang-alt */
        li = xmlNewNode(rdf, (const xmlChar *)"li");
        if (!li) return false;
        if (alt->children) xmlAddPrevSibling(alt->children, li);
        else xmlAddChild(alt, li);
        xmlNs *xmlns = xmlSearchNs(alt->doc, li, (const xmlChar *)"xml");
        xmlSetNsProp(li, xmlns, (const xmlChar *)"lang", (const xmlChar *)"x-default");
    }
    xmlNodeSetContent(li, NULL);
    xmlNodeAddContent(li, (const xmlChar *)text); /* escaped on output */
    return true;
}

/* The image's own CreatorTool is kept; the caption is then recorded as an
 * xmpMM:History event ("edited", /metadata, softwareAgent = us). An earlier
 * event of ours is updated, so reruns do not pile up entries. */
static bool history_event(xmlNode *desc, xmlNs *rdf, const char *tool) {
    xmlNode *hist = NULL;
    for (xmlNode *c = desc->children; c && !hist; c = c->next)
        if (is_el(c, NS_XMPMM, "History")) hist = c;
    if (!hist) {
        xmlNs *mm = ns_for(desc, NS_XMPMM, "xmpMM");
        if (!mm || !(hist = xmlNewChild(desc, mm, (const xmlChar *)"History", NULL))) return false;
    }
    xmlNode *seq = NULL;
    for (xmlNode *c = hist->children; c && !seq; c = c->next)
        if (is_el(c, NS_RDF, "Seq")) seq = c;
    if (!seq && !(seq = xmlNewChild(hist, rdf, (const xmlChar *)"Seq", NULL))) return false;
    for (xmlNode *li = seq->children; li; li = li->next) { /* ours already there: update it */
        if (!is_el(li, NS_RDF, "li")) continue;
        for (xmlNode *c = li->children; c; c = c->next)
            if (is_el(c, NS_STEVT, "softwareAgent")) {
                xmlChar *t = xmlNodeGetContent(c);
                bool ours = t && !strncmp((const char *)t, "idefics-edge", 12);
                xmlFree(t);
                if (ours) {
                    xmlNodeSetContent(c, NULL);
                    xmlNodeAddContent(c, (const xmlChar *)tool);
                    return true;
                }
            }
    }
    xmlNs *ev = ns_for(desc, NS_STEVT, "stEvt");
    xmlNode *li = ev ? xmlNewChild(seq, rdf, (const xmlChar *)"li", NULL) : NULL;
    if (!li || !xmlSetNsProp(li, rdf, (const xmlChar *)"parseType", (const xmlChar *)"Resource")) return false;
    xmlNode *a = xmlNewChild(li, ev, (const xmlChar *)"action", (const xmlChar *)"edited");
    xmlNode *ch = xmlNewChild(li, ev, (const xmlChar *)"changed", (const xmlChar *)"/metadata");
    xmlNode *sw = xmlNewChild(li, ev, (const xmlChar *)"softwareAgent", NULL);
    if (!a || !ch || !sw) return false;
    xmlNodeAddContent(sw, (const xmlChar *)tool);
    return true;
}

char *cap_xmp_merge(const char *existing, size_t n, const char *caption, const char *creator_tool, size_t *out_len,
                    char *msg, size_t msg_size) {
    xmlDoc *doc = NULL;
    if (existing && n) {
        if (n > INT32_MAX) {
            snprintf(msg, msg_size, "sidecar too large");
            return NULL;
        }
        doc = xmlReadMemory(existing, (int)n, "sidecar.xmp", NULL,
                            XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        if (!doc) {
            const xmlError *e = xmlGetLastError();
            char why[200] = "";
            if (e && e->message) snprintf(why, sizeof why, ": %s", e->message);
            why[strcspn(why, "\n")] = '\0'; /* libxml2 ends its messages with a newline */
            snprintf(msg, msg_size, "existing sidecar is not well-formed XML%s; left untouched", why);
            return NULL;
        }
    } else {
        static const char skeleton[] =
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<x:xmpmeta xmlns:x=\"" NS_X "\" x:xmptk=\"idefics-edge\">\n"
            " <rdf:RDF xmlns:rdf=\"" NS_RDF "\">\n"
            "  <rdf:Description rdf:about=\"\"/>\n"
            " </rdf:RDF>\n"
            "</x:xmpmeta>\n";
        doc = xmlReadMemory(skeleton, (int)sizeof skeleton - 1, "new.xmp", NULL, XML_PARSE_NONET);
        if (!doc) {
            snprintf(msg, msg_size, "out of memory");
            return NULL;
        }
    }
    char *result = NULL;
    xmlNode *root = xmlDocGetRootElement(doc);
    xmlNode *rdfroot = is_el(root, NS_RDF, "RDF") ? root : find_el(root, NS_RDF, "RDF");
    if (!rdfroot) {
        snprintf(msg, msg_size, "existing sidecar has no rdf:RDF element; left untouched");
        goto done;
    }
    xmlNs *rdf = rdfroot->ns;
    xmlNode *prop = find_el(rdfroot->children, NS_IPTC, "AltTextAccessibility");
    xmlNode *desc = prop ? prop->parent : NULL;
    if (!desc)
        for (xmlNode *c = rdfroot->children; c && !desc; c = c->next)
            if (is_el(c, NS_RDF, "Description")) desc = c;
    if (!desc) {
        desc = xmlNewChild(rdfroot, rdf, (const xmlChar *)"Description", NULL);
        if (!desc || !xmlSetNsProp(desc, rdf, (const xmlChar *)"about", (const xmlChar *)"")) goto oom;
    }
    if (!prop) {
        xmlNs *iptc = ns_for(desc, NS_IPTC, "Iptc4xmpCore");
        if (!iptc || !(prop = xmlNewChild(desc, iptc, (const xmlChar *)"AltTextAccessibility", NULL))) goto oom;
    }
    if (!set_lang_alt(prop, rdf, caption)) goto oom;

    /* xmp:CreatorTool: as an attribute or element of any Description */
    bool have_tool = false;
    for (xmlNode *d = rdfroot->children; d && !have_tool; d = d->next) {
        if (!is_el(d, NS_RDF, "Description")) continue;
        xmlChar *a = xmlGetNsProp(d, (const xmlChar *)"CreatorTool", (const xmlChar *)NS_XMP);
        if (a) {
            have_tool = true;
            if (!strncmp((const char *)a, "idefics-edge", 12))
                xmlSetNsProp(d, xmlSearchNsByHref(doc, d, (const xmlChar *)NS_XMP), (const xmlChar *)"CreatorTool",
                             (const xmlChar *)creator_tool);
            xmlFree(a);
        }
        for (xmlNode *c = d->children; c && !have_tool; c = c->next)
            if (is_el(c, NS_XMP, "CreatorTool")) {
                have_tool = true;
                xmlChar *t = xmlNodeGetContent(c);
                if (t && !strncmp((const char *)t, "idefics-edge", 12)) {
                    xmlNodeSetContent(c, NULL);
                    xmlNodeAddContent(c, (const xmlChar *)creator_tool);
                }
                xmlFree(t);
            }
    }
    if (!have_tool) {
        xmlNs *xns = ns_for(desc, NS_XMP, "xmp");
        xmlNode *t = xns ? xmlNewChild(desc, xns, (const xmlChar *)"CreatorTool", NULL) : NULL;
        if (!t) goto oom;
        xmlNodeAddContent(t, (const xmlChar *)creator_tool);
    } else if (!history_event(desc, rdf, creator_tool)) {
        goto oom;
    }
    xmlChar *buf = NULL;
    int len = 0;
    xmlDocDumpMemoryEnc(doc, &buf, &len, "UTF-8");
    if (!buf || len <= 0) goto oom;
    result = malloc((size_t)len + 1);
    if (result) {
        memcpy(result, buf, (size_t)len);
        result[len] = '\0';
        *out_len = (size_t)len;
    } else snprintf(msg, msg_size, "out of memory");
    xmlFree(buf);
    goto done;
oom:
    snprintf(msg, msg_size, "out of memory building the sidecar");
done:
    xmlFreeDoc(doc);
    return result;
}

static char *sidecar_path(const char *image, cap_sidecar_name naming) {
    size_t n = strlen(image);
    if (naming == CAP_SIDECAR_STEM) {
        const char *slash = strrchr(image, '/');
        const char *dot = strrchr(image, '.');
        if (dot && (!slash || dot > slash + 1)) n = (size_t)(dot - image);
    }
    char *p = malloc(n + 5);
    if (p) {
        memcpy(p, image, n);
        memcpy(p + n, ".xmp", 5);
    }
    return p;
}

int cap_xmp_write(const char *image_path, cap_sidecar_name naming, const char *caption, const char *model, char *msg,
                  size_t msg_size) {
    char *path = sidecar_path(image_path, naming);
    if (!path) {
        snprintf(msg, msg_size, "out of memory");
        return -1;
    }
    int rc = -1;
    char *old = NULL, *doc = NULL, *tmp = NULL;
    size_t old_n = 0, doc_n = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_SIDECAR_BYTES) {
            snprintf(msg, msg_size, "sidecar %s is not a regular file of at most 16 MiB; left untouched", path);
            close(fd);
            goto done;
        }
        old_n = (size_t)st.st_size;
        old = malloc(old_n + 1);
        size_t got = 0;
        while (old && got < old_n) {
            ssize_t k = read(fd, old + got, old_n - got);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            got += (size_t)k;
        }
        close(fd);
        if (!old || got != old_n) {
            snprintf(msg, msg_size, "cannot read sidecar %s; left untouched", path);
            goto done;
        }
    } else if (errno != ENOENT) {
        snprintf(msg, msg_size, "cannot open sidecar %s: %s", path, strerror(errno));
        goto done;
    }
    char tool[256];
    snprintf(tool, sizeof tool, "idefics-edge %s (model %s)", idefics_version_string(), model && *model ? model : "?");
    char why[400] = "";
    doc = cap_xmp_merge(old, old_n, caption, tool, &doc_n, why, sizeof why);
    if (!doc) {
        snprintf(msg, msg_size, "sidecar %s: %s", path, why);
        goto done;
    }
    size_t tl = strlen(path) + 32;
    tmp = malloc(tl);
    if (!tmp) goto done;
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    int tfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (tfd < 0) {
        snprintf(msg, msg_size, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    int werr = 0;
    for (size_t off = 0; off < doc_n && !werr;) {
        ssize_t k = write(tfd, doc + off, doc_n - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) werr = k < 0 ? errno : EIO;
        else off += (size_t)k;
    }
    if (!werr && fdatasync(tfd) != 0) werr = errno;
    if (close(tfd) != 0 && !werr) werr = errno;
    if (!werr && rename(tmp, path) != 0) werr = errno;
    if (werr) {
        unlink(tmp);
        snprintf(msg, msg_size, "cannot write sidecar %s: %s (the old one is unchanged)", path, strerror(werr));
        goto done;
    }
    rc = 0;
done:
    free(tmp);
    free(doc);
    free(old);
    free(path);
    return rc;
}

#else /* no libxml2 */

bool cap_xmp_available(void) { return false; }
char *cap_xmp_merge(const char *existing, size_t n, const char *caption, const char *creator_tool, size_t *out_len,
                    char *msg, size_t msg_size) {
    (void)existing, (void)n, (void)caption, (void)creator_tool, (void)out_len;
    snprintf(msg, msg_size, "XMP sidecars need libxml2 (meson feature 'xmp')");
    return NULL;
}
int cap_xmp_write(const char *image_path, cap_sidecar_name naming, const char *caption, const char *model, char *msg,
                  size_t msg_size) {
    (void)image_path, (void)naming, (void)caption, (void)model;
    snprintf(msg, msg_size, "XMP sidecars need libxml2 (meson feature 'xmp')");
    return -1;
}
#endif
