/*
 * Idefics.java - the Java/Kotlin binding of idefics-edge (libidefics_jni.so,
 * runtime/jni/idefics_jni.c). One object = one loaded model and one
 * conversation. ask/caption/close are serialised on the object; cancel() may
 * be called from any thread (e.g. a UI button) while ask runs elsewhere.
 *
 *   try (Idefics m = Idefics.load(path, new Idefics.LoadParams())) {
 *       String a = m.ask(imagePath, "What is in this image?", new Idefics.GenerateParams(),
 *                        piece -> { show(piece); return true; });
 *   }
 *
 * Pixels from an Android Bitmap: bitmap.getPixels(px, 0, w, 0, 0, w, h), then
 * ask(px, w, h, question, ...). Run ask on a worker thread, never the UI thread.
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

    /** The question caption() asks. */
    public static final String CAPTION_PROMPT = "Describe this image in one sentence.";

    private volatile long handle;

    private Idefics(long handle) { this.handle = handle; }

    /** Map and validate an .idfx model file and create its session. */
    public static Idefics load(String modelPath, LoadParams p) throws IdeficsException {
        if (p == null) p = new LoadParams();
        return new Idefics(nativeLoad(modelPath, p.backend, p.threads, p.contextLength, p.kvType, p.lowMemory));
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

    /** Another question in the same conversation (the model sees the earlier turns and images). */
    public synchronized String followUp(String question, GenerateParams g, TokenListener l) throws IdeficsException {
        return run(true, 0, null, null, null, 0, 0, question, g, l);
    }

    /** Alt text for an image file: a short description, 48 tokens at most. */
    public synchronized String caption(String imagePath, TokenListener l) throws IdeficsException {
        GenerateParams g = new GenerateParams();
        g.maxNewTokens = 48;
        return ask(imagePath, CAPTION_PROMPT, g, l).trim();
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
        if (handle == 0) throw new IllegalStateException("Idefics object is closed");
        if (g == null) g = new GenerateParams();
        return nativeAsk(handle, keep, kind, path, argb, rgb, w, h, q, g.maxNewTokens, g.temperature, g.topK,
                g.topP, g.repetitionPenalty, g.seed, g.stopAtEos, l);
    }

    private static native long nativeLoad(String path, int backend, int threads, int nCtx, int kvType,
                                          boolean lowMemory) throws IdeficsException;
    private static native void nativeClose(long handle);
    private static native void nativeCancel(long handle);
    private static native String nativeInfo(long handle);
    private static native String nativeAsk(long handle, boolean keepHistory, int imageKind, String path, int[] argb,
                                           byte[] rgb, int width, int height, String question, int maxNewTokens,
                                           float temperature, int topK, float topP, float repetitionPenalty,
                                           long seed, boolean stopAtEos, TokenListener listener)
            throws IdeficsException;
}
