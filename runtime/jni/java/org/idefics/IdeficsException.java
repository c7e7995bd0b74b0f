/*
 * IdeficsException.java - a failed idefics-edge call: the library's status
 * (its constant name, e.g. "IDEFICS_ERR_IO", and its pinned number) plus the
 * one-line message that names what failed.
 */
package org.idefics;

public class IdeficsException extends Exception {
    private static final long serialVersionUID = 1L;

    private final String status;
    private final int code;
    private final String partialAnswer;

    /** Called from native code (runtime/jni/idefics_jni.c: throw_status). */
    public IdeficsException(String status, int code, String message, String partialAnswer) {
        super(status + ": " + message);
        this.status = status;
        this.code = code;
        this.partialAnswer = partialAnswer;
    }

    /** The status constant's name, e.g. "IDEFICS_ERR_CANCELLED". */
    public String getStatus() { return status; }

    /** The status value from idefics.h (negative). */
    public int getCode() { return code; }

    /** For a cancelled or interrupted generation: the text produced until then; else null. */
    public String getPartialAnswer() { return partialAnswer; }

    public boolean isCancelled() { return "IDEFICS_ERR_CANCELLED".equals(status); }
}
