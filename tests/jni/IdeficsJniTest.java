/*
 * IdeficsJniTest.java - the JNI layer (libidefics_jni.so + org.idefics.Idefics)
 * on the host JVM, run by tests/test_jni.sh:
 *   java -Djava.library.path=LIBDIR IdeficsJniTest MODEL.idfx IMAGE.png
 * Checks: load errors become IdeficsException with the status name; ask on a
 * file streams pieces that concatenate to the returned answer and is
 * deterministic (greedy); the same image as ARGB pixels (Bitmap.getPixels
 * layout) and as RGB bytes gives the same answer as the file; caption; a
 * follow-up turn; a listener returning false stops; cancel() from another
 * thread stops a running ask with IDEFICS_ERR_CANCELLED and the partial
 * answer; a missing image fails with IDEFICS_ERR_IO naming the file, and the
 * object stays usable; close twice; use after close. Issue 14: an encoded image
 * (PNG bytes) gives the file's answer; several images per question; images in
 * a follow-up; caption() asks the model's caption prompt; two sessions on one
 * model answer at once on two threads and outlive the first object's close();
 * a memory profile by name (clamped to the model's context) and an unknown one;
 * backend AUTO in this JVM runs on the CPU (no OpenCL ICD touches the JVM's
 * signal handlers).
 * Exit status: 0 all passed, 1 a check failed.
 */
import java.awt.image.BufferedImage;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import javax.imageio.ImageIO;
import org.idefics.Idefics;
import org.idefics.IdeficsException;

public class IdeficsJniTest {
    static int failures = 0, checks = 0;

    static void check(boolean ok, String what) {
        checks++;
        if (!ok) {
            failures++;
            System.out.println("FAIL " + what);
        } else {
            System.out.println("ok   " + what);
        }
    }

    static Idefics.GenerateParams greedy(int n) {
        Idefics.GenerateParams g = new Idefics.GenerateParams();
        g.maxNewTokens = n;
        return g;
    }

    public static void main(String[] args) throws Exception {
        String modelPath = args[0], imagePath = args[1], boardsDir = args.length > 2 ? args[2] : null;

        // 1. load errors carry the status
        try {
            Idefics.load(modelPath + ".missing", null);
            check(false, "load of a missing file throws");
        } catch (IdeficsException e) {
            check(e.getStatus().equals("IDEFICS_ERR_IO") && e.getCode() == -3
                  && e.getMessage().contains(".missing"), "load of a missing file: " + e.getMessage());
        }

        Idefics.LoadParams lp = new Idefics.LoadParams();
        lp.threads = 1;
        lp.backend = Idefics.LoadParams.BACKEND_CPU; // AUTO would probe OpenCL (pocl on CI hosts installs signal handlers the JVM warns about)
        lp.contextLength = 0; // the model's maximum (the demo model has 128 positions)
        Idefics m = Idefics.load(modelPath, lp);
        System.out.println("model: " + m.info());
        check(m.info().contains("backend="), "info");

        // 2. ask on a file, streaming
        StringBuilder streamed = new StringBuilder();
        int[] calls = {0};
        String a1 = m.ask(imagePath, "What is in this image?", greedy(12), piece -> {
            calls[0]++;
            streamed.append(piece);
            return true;
        });
        System.out.println("answer: \"" + a1 + "\" in " + calls[0] + " pieces");
        check(a1 != null && a1.equals(streamed.toString()), "streamed pieces concatenate to the answer");
        check(calls[0] > 0 || a1.isEmpty(), "listener called for a non-empty answer");
        String a1b = m.ask(imagePath, "What is in this image?", greedy(12), null);
        check(a1.equals(a1b), "greedy ask is repeatable, without a listener too");

        // 3. the same image as pixels
        BufferedImage img = ImageIO.read(new File(imagePath));
        int w = img.getWidth(), h = img.getHeight();
        int[] argb = img.getRGB(0, 0, w, h, null, 0, w); // 0xAARRGGBB, not premultiplied, like Bitmap.getPixels
        String a2 = m.ask(argb, w, h, "What is in this image?", greedy(12), null);
        check(a1.equals(a2), "ARGB pixels give the file's answer (\"" + a2 + "\")");
        // RGB bytes: composite over white by hand, as the library does for RGBA
        byte[] rgb = new byte[w * h * 3];
        for (int i = 0; i < w * h; i++) {
            int p = argb[i], al = p >>> 24;
            for (int c = 0; c < 3; c++) {
                int v = (p >>> (16 - 8 * c)) & 255;
                rgb[3 * i + c] = (byte) ((v * al + 255 * (255 - al) + 127) / 255);
            }
        }
        String a3 = m.askRgb(rgb, w, h, "What is in this image?", greedy(12), null);
        check(a3 != null, "RGB bytes answer (\"" + a3 + "\")");
        try {
            m.ask(new int[3], 2, 2, "What?", greedy(4), null);
            check(false, "short pixel array throws");
        } catch (IdeficsException e) {
            check(e.getStatus().equals("IDEFICS_ERR_INVALID_ARG"), "short pixel array: " + e.getMessage());
        }

        // 4. caption and a follow-up turn
        String cap = m.caption(imagePath, null);
        check(cap != null, "caption: \"" + cap + "\"");
        String f = m.followUp("And what colour is it?", greedy(6), null);
        check(f != null, "follow-up turn: \"" + f + "\"");

        // 5. a listener returning false stops after one piece
        Idefics.GenerateParams longer = greedy(40);
        longer.stopAtEos = false;
        int[] n = {0};
        m.ask(imagePath, "Describe this image.", longer, piece -> ++n[0] < 1);
        check(n[0] <= 1, "listener returning false stops (" + n[0] + " pieces)");

        // 6. cancel from another thread while ask runs
        CountDownLatch started = new CountDownLatch(1), cancelled = new CountDownLatch(1);
        AtomicReference<Throwable> outcome = new AtomicReference<>();
        AtomicReference<String> result = new AtomicReference<>();
        int[] seen = {0};
        Thread worker = new Thread(() -> {
            try {
                result.set(m.ask(imagePath, "Describe this image.", longer, piece -> {
                    // Every token (special ones included) is counted by the library;
                    // the listener sees non-empty pieces. Hold the first one until
                    // the other thread has called cancel().
                    if (seen[0]++ == 0) {
                        started.countDown();
                        try {
                            cancelled.await(10, TimeUnit.SECONDS);
                        } catch (InterruptedException ie) {
                            return false;
                        }
                    }
                    return true;
                }));
            } catch (Throwable t) {
                outcome.set(t);
            }
        });
        worker.start();
        boolean began = started.await(30, TimeUnit.SECONDS);
        m.cancel();
        cancelled.countDown();
        worker.join(60000);
        Throwable t = outcome.get();
        if (!began) {
            check(false, "cancel: the answer produced no visible piece to cancel at");
        } else {
            check(t instanceof IdeficsException && ((IdeficsException) t).isCancelled(),
                  "cancel from another thread throws IDEFICS_ERR_CANCELLED (" + t + ", result " + result.get() + ")");
            if (t instanceof IdeficsException)
                check(((IdeficsException) t).getPartialAnswer() != null && seen[0] < 40,
                      "cancel keeps the partial answer (\"" + ((IdeficsException) t).getPartialAnswer() + "\")");
        }

        // 7. a missing image: IDEFICS_ERR_IO naming the file; the object stays usable
        try {
            m.ask(imagePath + ".nope.png", "What is in this image?", greedy(4), null);
            check(false, "missing image throws");
        } catch (IdeficsException e) {
            check(e.getStatus().equals("IDEFICS_ERR_IO") && e.getMessage().contains(".nope.png"),
                  "missing image: " + e.getMessage());
        }
        String again = m.ask(imagePath, "What is in this image?", greedy(12), null);
        check(a1.equals(again), "usable after errors and cancel, same answer");
        Idefics late = m.newSession(); // closed after m below

        // 9. issue 14: an encoded image, several images per question, images in a follow-up
        byte[] png = Files.readAllBytes(Paths.get(imagePath));
        String e1 = m.ask(new Idefics.Image[] {Idefics.Image.encoded(png)}, "What is in this image?", greedy(12), null);
        check(a1.equals(e1), "encoded PNG bytes give the file's answer (\"" + e1 + "\")");
        String two = m.ask(new Idefics.Image[] {Idefics.Image.file(imagePath), Idefics.Image.encoded(png)},
                "What is in this image?", greedy(12), null);
        String twoB = m.ask(new Idefics.Image[] {Idefics.Image.encoded(png), Idefics.Image.argb(argb, w, h)},
                "What is in this image?", greedy(12), null);
        check(two != null && two.equals(twoB), "two images in one question, any form, same answer (\"" + two + "\")");
        m.ask(imagePath, "What is in this image?", greedy(4), null);
        String fu = m.followUp(new Idefics.Image[] {Idefics.Image.encoded(png)}, "And this one?", greedy(6), null);
        check(fu != null, "a follow-up with a new image: \"" + fu + "\"");
        try {
            m.followUp(new Idefics.Image[] {Idefics.Image.encoded(new byte[] {1, 2, 3})}, "And this?", greedy(4), null);
            check(false, "a follow-up with a broken image throws");
        } catch (IdeficsException e) {
            check(e.getStatus().equals("IDEFICS_ERR_IMAGE_DECODE") && e.getMessage().contains("image 1"),
                  "broken encoded image: " + e.getMessage());
        }

        // 10. caption() asks the model's caption prompt (its metadata, else "Describe the image.")
        String prompt = m.captionPrompt();
        String capAsk = m.ask(imagePath, prompt, greedy(48), null).trim();
        check(cap.equals(capAsk), "caption() == ask(captionPrompt() = \"" + prompt + "\")");
        if (modelPath.contains("tiny-shapes"))
            check(prompt.equals("Describe the image.") && cap.endsWith("background."),
                  "demo model caption: \"" + cap + "\"");

        // 11. two sessions on one model, at once on two threads; they outlive m.close()
        Idefics s1 = m.newSession(), s2 = m.newSession();
        AtomicReference<String> r1 = new AtomicReference<>(), r2 = new AtomicReference<>();
        AtomicReference<Throwable> err1 = new AtomicReference<>();
        Thread t1 = new Thread(() -> {
            try {
                for (int i = 0; i < 3; i++) r1.set(s1.ask(imagePath, "What is in this image?", greedy(12), null));
            } catch (Throwable x) {
                err1.set(x);
            }
        });
        Thread t2 = new Thread(() -> {
            try {
                for (int i = 0; i < 3; i++) r2.set(s2.ask(png.length > 0 ? new Idefics.Image[] {Idefics.Image.encoded(png)}
                        : null, "What is in this image?", greedy(12), null));
            } catch (Throwable x) {
                err1.set(x);
            }
        });
        t1.start();
        t2.start();
        t1.join(60000);
        t2.join(60000);
        check(err1.get() == null && a1.equals(r1.get()) && a1.equals(r2.get()),
              "two sessions on two threads give the same answers (" + r1.get() + " / " + r2.get() + ", " + err1.get() + ")");

        // 12. a memory profile by name; an unknown name
        if (boardsDir != null) {
            Idefics.LoadParams pp = new Idefics.LoadParams();
            pp.threads = 1;
            pp.profile = "8g"; // n_ctx 1024, clamped to the model's maximum
            pp.boardsDir = boardsDir;
            try (Idefics mp = Idefics.load(modelPath, pp)) {
                String ap = mp.ask(imagePath, "What is in this image?", greedy(12), null);
                check(a1.equals(ap), "profile 8g: loads, same answer (\"" + ap + "\")");
            }
            pp.profile = "no-such-board";
            try {
                Idefics.load(modelPath, pp).close();
                check(false, "an unknown profile throws");
            } catch (IdeficsException e) {
                check(e.getStatus().equals("IDEFICS_ERR_INVALID_ARG") && e.getMessage().contains("no-such-board"),
                      "unknown profile: " + e.getMessage());
            }
        }

        // 13. AUTO in a desktop JVM: the CPU, OpenCL never probed
        Idefics.LoadParams auto = new Idefics.LoadParams();
        auto.threads = 1;
        try (Idefics ma = Idefics.load(modelPath, auto)) {
            check(ma.info().contains("backend=cpu"), "AUTO in a JVM runs on the CPU: " + ma.info());
        }

        // 8. close twice; use after close
        m.close();
        m.close();
        try {
            m.ask(imagePath, "x", greedy(1), null);
            check(false, "ask after close throws");
        } catch (IllegalStateException e) {
            check(true, "ask after close: IllegalStateException");
        }
        // sessions made from m keep the model loaded after m.close()
        String afterClose = s1.ask(imagePath, "What is in this image?", greedy(12), null);
        check(a1.equals(afterClose), "a session still answers after the first object is closed");
        check(a1.equals(late.ask(imagePath, "What is in this image?", greedy(12), null)), "and another one");
        s1.close();
        s2.close();
        late.close();

        System.out.println(checks - failures + " of " + checks + " checks passed");
        System.exit(failures == 0 ? 0 : 1);
    }
}
