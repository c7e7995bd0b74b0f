/*
 * Idefics.java - the Java/Kotlin binding of idefics-edge (libidefics_jni.so,
 * runtime/jni/idefics_jni.c). One object = one conversation on a loaded model
 * (newSession() adds more on the same model). ask/caption/close are serialised
 * on the object; cancel() may be called from any thread (e.g. a UI button)
 * while ask runs elsewhere.
 *
 *   try (Idefics m = Idefics.load(path, new Idefics.LoadParams())) {
 *       String a = m.ask(imagePath, "What is in this image?", new Idefics.GenerateParams(),
 *                        piece -> { show(piece); return true; });
 *   }
 *
 * Pixels from an Android Bitmap: bitmap.getPixels(px, 0, w, 0, 0, w, h), then
 * ask(px, w, h, question, ...). Run ask on a worker thread, never the UI thread.
 *
 * Several images per question, in any form, and images in follow-ups:
 *
 *   String a = m.ask(new Idefics.Image[] {Idefics.Image.file(p1), Idefics.Image.encoded(jpegBytes)},
 *                    "What differs between these two pictures?", g, null);
 *   String b = m.followUp(new Idefics.Image[] {Idefics.Image.file(p3)}, "And this one?", g, null);
 *
 * Several conversations on one loaded model (the weights are mapped once):
 * newSession() returns an Idefics sharing this model with its own conversation
 * and KV cache; each may run on its own thread. The model stays loaded until
 * the last of them is closed, whichever order they are closed in.
 *
 * Backend AUTO in a desktop JVM means the CPU: probing OpenCL loads the ICDs,
 * and PoCL's LLVM replaces the JVM's signal handlers (which the JVM needs for
 * null checks and safepoints). Ask for BACKEND_OPENCL by name to use a GPU
 * there. On Android (ART) AUTO probes OpenCL as in C. Set the environment
 * variable IDEFICS_JNI_OPENCL_AUTO=1 to let AUTO probe OpenCL in a desktop JVM.
 */
package org.idefics;

public final class Idefics implements AutoCloseable {
    static {
        System.loadLibrary("idefics_jni");
    }

    /** Receives each decoded piece of the answer as it is generated. Return false to stop early. */
    public interface TokenListener {
        boolean onToken(String piece);
    }

    /** Model and session settings (idefics_model_params / idefics_session_params). */
    public static final class LoadParams {
        public static final int BACKEND_AUTO = 0, BACKEND_CPU = 1, BACKEND_OPENCL = 2, BACKEND_CPU_REF = 3;
        public static final int KV_F32 = 0, KV_F16 = 1, KV_Q8 = 2;

        public int backend = BACKEND_AUTO;
        /** 0 = all cores. On phones, the number of big cores is usually faster. */
        public int threads = 0;
        /** Context length in tokens; 0 = the model's maximum (2048 for IDEFICS-9B). */
        public int contextLength = 0;
        public int kvType = KV_F16;
        /** Let the OS page weights in and out of the mapped file (phones with little free RAM). */
        public boolean lowMemory = false;
        /** A board or memory profile by name ("8g", "phone-8g", "raspberry-pi-5", ...: boards/README.md):
         * its context length, KV type, low-memory mode, threads and backend, unless the fields
         * above are set to something other than their defaults. null = none. The context is
         * clamped to the model's maximum. */
        public String profile = null;
        /** The boards/ folder the profile is read from (shipped with the app, e.g. copied from
         * its assets); default $IDEFICS_BOARDS_DIR. */
        public String boardsDir = System.getenv("IDEFICS_BOARDS_DIR");
    }

    /** An image for ask/followUp: a file, an encoded image in memory, or pixels. */
    public static final class Image {
        final int kind;
        final Object data;
        final int width, height;

        private Image(int kind, Object data, int width, int height) {
            if (data == null) throw new NullPointerException("image data");
            this.kind = kind;
            this.data = data;
            this.width = width;
            this.height = height;
        }

        /** An image file (JPEG, PNG, BMP, GIF, PNM). */
        public static Image file(String path) { return new Image(1, path, 0, 0); }

        /** ARGB pixels (Android Bitmap.getPixels, 0xAARRGGBB, not premultiplied). */
        public static Image argb(int[] argb, int width, int height) { return new Image(2, argb, width, height); }

        /** Packed 8-bit RGB pixels (width * height * 3 bytes). */
        public static Image rgb(byte[] rgb, int width, int height) { return new Image(3, rgb, width, height); }

        /** An encoded image held in memory: a JPEG/PNG/... file's bytes (camera, network, assets). */
        public static Image encoded(byte[] bytes) { return new Image(4, bytes, 0, 0); }
    }

    /** Generation settings (idefics_generate_params); the defaults are the library's. */
    public static final class GenerateParams {
        public int maxNewTokens = 64;
        public float temperature = 0f; // 0 = greedy
        public int topK = 0;
        public float topP = 1f;
        public float repetitionPenalty = 1f;
        public long seed = 0;
        public boolean stopAtEos = true;
    }

    /** The question caption() asks when the model has no "chat.caption_prompt" metadata
     * (the same default as `idefics caption`). */
    public static final String CAPTION_PROMPT = "Describe the image.";

    private volatile long handle;

    private Idefics(long handle) { this.handle = handle; }

    /** ART (Android) reports "Dalvik" as its VM name; anything else is a desktop JVM. */
    private static boolean desktopJvm() {
        return !"Dalvik".equals(System.getProperty("java.vm.name"))
                && !"1".equals(System.getenv("IDEFICS_JNI_OPENCL_AUTO"));
    }

    /** Map and validate an .idfx model file and create its session. */
    public static Idefics load(String modelPath, LoadParams p) throws IdeficsException {
        if (p == null) p = new LoadParams();
        return new Idefics(nativeLoad(modelPath, p.backend, p.threads, p.contextLength, p.kvType, p.lowMemory,
                p.profile, p.boardsDir, desktopJvm()));
    }

    /** Another conversation on this object's model, with its own KV cache (0 = the model's
     * context, all cores). Close it when done; the model stays loaded until every
     * Idefics sharing it is closed. */
    public synchronized Idefics newSession(int contextLength, int kvType, int threads) throws IdeficsException {
        if (handle == 0) throw new IllegalStateException("Idefics object is closed");
        return new Idefics(nativeNewSession(handle, threads, contextLength, kvType));
    }

    /** newSession with the model's context, an F16 KV cache and all cores. */
    public Idefics newSession() throws IdeficsException {
        return newSession(0, LoadParams.KV_F16, 0);
    }

    /** The question caption() asks: the model's own "chat.caption_prompt", else CAPTION_PROMPT. */
    public synchronized String captionPrompt() {
        if (handle == 0) throw new IllegalStateException("Idefics object is closed");
        String p = nativeCaptionPrompt(handle);
        return p != null ? p : CAPTION_PROMPT;
    }

    /** A one-line description: name, parameters, vocabulary, backend. */
    public synchronized String info() { return nativeInfo(handle); }

    /** A new conversation: one question about an image file (JPEG, PNG, BMP, GIF, PNM). */
    public synchronized String ask(String imagePath, String question, GenerateParams g, TokenListener l)
            throws IdeficsException {
        if (imagePath == null) throw new NullPointerException("imagePath");
        return run(false, 1, imagePath, null, null, 0, 0, question, g, l);
    }

    /** A new conversation about ARGB pixels (Android Bitmap.getPixels, 0xAARRGGBB, not premultiplied). */
    public synchronized String ask(int[] argb, int width, int height, String question, GenerateParams g,
                                   TokenListener l) throws IdeficsException {
        if (argb == null) throw new NullPointerException("argb");
        return run(false, 2, null, argb, null, width, height, question, g, l);
    }

    /** A new conversation about packed 8-bit RGB pixels (width * height * 3 bytes). */
    public synchronized String askRgb(byte[] rgb, int width, int height, String question, GenerateParams g,
                                      TokenListener l) throws IdeficsException {
        if (rgb == null) throw new NullPointerException("rgb");
        return run(false, 3, null, null, rgb, width, height, question, g, l);
    }

    /** A new conversation: one question about any number of images (none: a text-only question).
     * The images go into the turn where the model's chat format puts them. */
    public synchronized String ask(Image[] images, String question, GenerateParams g, TokenListener l)
            throws IdeficsException {
        return runImages(false, images, question, g, l);
    }

    /** Another question in the same conversation (the model sees the earlier turns and images). */
    public synchronized String followUp(String question, GenerateParams g, TokenListener l) throws IdeficsException {
        return run(true, 0, null, null, null, 0, 0, question, g, l);
    }

    /** Another question in the same conversation, with new images for it. If an image cannot be
     * read, the images before it in this call stay in the conversation: start over with ask(). */
    public synchronized String followUp(Image[] images, String question, GenerateParams g, TokenListener l)
            throws IdeficsException {
        return runImages(true, images, question, g, l);
    }

    /** Alt text for an image file: the answer to captionPrompt(), 48 tokens at most. */
    public synchronized String caption(String imagePath, TokenListener l) throws IdeficsException {
        if (imagePath == null) throw new NullPointerException("imagePath");
        return caption(Image.file(imagePath), l);
    }

    /** Alt text for an image in any form. */
    public synchronized String caption(Image image, TokenListener l) throws IdeficsException {
        GenerateParams g = new GenerateParams();
        g.maxNewTokens = 48;
        return ask(new Image[] {image}, captionPrompt(), g, l).trim();
    }

    /** Stop a running ask from another thread: it throws IdeficsException with isCancelled(). */
    public void cancel() {
        long h = handle;
        if (h != 0) nativeCancel(h);
    }

    /** Free the model and session. Safe to call twice; the object is unusable afterwards. */
    @Override
    public synchronized void close() {
        long h = handle;
        handle = 0;
        nativeClose(h);
    }

    private String run(boolean keep, int kind, String path, int[] argb, byte[] rgb, int w, int h, String q,
                       GenerateParams g, TokenListener l) throws IdeficsException {
        Image[] images = kind == 0 ? new Image[0]
                : new Image[] {new Image(kind, kind == 1 ? path : kind == 2 ? (Object) argb : rgb, w, h)};
        return runImages(keep, images, q, g, l);
    }

    private String runImages(boolean keep, Image[] images, String q, GenerateParams g, TokenListener l)
            throws IdeficsException {
        if (handle == 0) throw new IllegalStateException("Idefics object is closed");
        if (g == null) g = new GenerateParams();
        if (images == null) images = new Image[0];
        int n = images.length;
        int[] kinds = new int[n], widths = new int[n], heights = new int[n];
        Object[] data = new Object[n];
        for (int i = 0; i < n; i++) {
            if (images[i] == null) throw new NullPointerException("images[" + i + "]");
            kinds[i] = images[i].kind;
            data[i] = images[i].data;
            widths[i] = images[i].width;
            heights[i] = images[i].height;
        }
        return nativeAsk(handle, keep, kinds, data, widths, heights, q, g.maxNewTokens, g.temperature, g.topK,
                g.topP, g.repetitionPenalty, g.seed, g.stopAtEos, l);
    }

    private static native long nativeLoad(String path, int backend, int threads, int nCtx, int kvType,
                                          boolean lowMemory, String profile, String boardsDir, boolean jvmSafe)
            throws IdeficsException;
    private static native long nativeNewSession(long handle, int threads, int nCtx, int kvType)
            throws IdeficsException;
    private static native String nativeCaptionPrompt(long handle);
    private static native void nativeClose(long handle);
    private static native void nativeCancel(long handle);
    private static native String nativeInfo(long handle);
    private static native String nativeAsk(long handle, boolean keepHistory, int[] imageKinds, Object[] imageData,
                                           int[] widths, int[] heights, String question, int maxNewTokens,
                                           float temperature, int topK, float topP, float repetitionPenalty,
                                           long seed, boolean stopAtEos, TokenListener listener)
            throws IdeficsException;
}
