#!/usr/bin/env bash
# tests/test_jni.sh - compile the Java binding (runtime/jni/java) and
# tests/jni/IdeficsJniTest.java with javac and run it on the host JVM against
# libidefics_jni.so. The model: the demo model (models/*.idfx) when one is
# committed, else the tiny fixture converted at build time (FALLBACK_MODEL).
#   usage: test_jni.sh LIBDIR FALLBACK_MODEL IMAGE SCRATCH
# Skips (77) without javac/java.
set -euo pipefail
libdir=$1 model=$2 image=$3 scratch=$4
root=${IDEFICS_SOURCE_ROOT:?}
javac=${JAVAC:-javac} java=${JAVA:-java}
if ! command -v "$javac" >/dev/null || ! command -v "$java" >/dev/null; then
    echo "SKIP: no javac/java (install openjdk-17-jdk-headless)"
    exit 77
fi
shopt -s nullglob
demo=("$root"/models/*.idfx)
if [ ${#demo[@]} -gt 0 ]; then model=${demo[0]}; fi
echo "model: $model"
rm -rf "$scratch"
mkdir -p "$scratch/classes"
"$javac" -Xlint:all -Werror -d "$scratch/classes" "$root"/runtime/jni/java/org/idefics/*.java "$root/tests/jni/IdeficsJniTest.java"
# -Xcheck:jni: the JVM checks every JNI call (like Android's CheckJNI) and warns on misuse.
set +e
"$java" -Xcheck:jni -Djava.library.path="$libdir" -cp "$scratch/classes" IdeficsJniTest "$model" "$image" "$root/boards" 2>&1 | tee "$scratch/out.txt"
rc=${PIPESTATUS[0]}
set -e
# -Xcheck:jni also reports signal handlers replaced behind the JVM's back (an OpenCL ICD's LLVM)
if grep -qi "handler modified\|handler was modified\|expected:.*found:.*handler" "$scratch/out.txt"; then
    echo "FAIL: a native library replaced the JVM's signal handlers"
    exit 1
fi
if grep -q "WARNING in native method" "$scratch/out.txt"; then
    echo "FAIL: -Xcheck:jni reported misuse"
    exit 1
fi
exit "$rc"
