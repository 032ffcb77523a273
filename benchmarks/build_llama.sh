#!/usr/bin/env bash
# Build llama.cpp's llama-quantize, llama-perplexity and llama-imatrix from the llama.cpp source
# vendored in the llama-cpp-python sdist on PyPI (the only source reachable offline-but-for-PyPI).
#
#   benchmarks/build_llama.sh PREFIX [VERSION]
#
# PREFIX/src  the unpacked llama.cpp tree (vendor/llama.cpp of the sdist; has convert_hf_to_gguf.py, gguf-py)
# PREFIX/bin  llama-quantize, llama-perplexity, llama-imatrix (static, -DGGML_NATIVE=ON: this CPU only)
# Re-running with the binaries present does nothing. Nothing here goes into git.
set -euo pipefail

PREFIX=${1:?usage: build_llama.sh PREFIX [LLAMA_CPP_PYTHON_VERSION]}
VERSION=${2:-0.3.36}
JOBS=${JOBS:-2}
TARGETS=(llama-quantize llama-perplexity llama-imatrix)

mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)

have_all=1
for t in "${TARGETS[@]}"; do [[ -x "$PREFIX/bin/$t" ]] || have_all=0; done
if [[ $have_all == 1 ]]; then
    echo "build_llama: $PREFIX/bin already has ${TARGETS[*]}"
    exit 0
fi

if [[ ! -f "$PREFIX/src/CMakeLists.txt" ]]; then
    dl="$PREFIX/download"
    mkdir -p "$dl"
    if ! ls "$dl"/llama_cpp_python-"$VERSION".tar.gz >/dev/null 2>&1; then
        python -m pip download --no-deps --no-binary :all: -d "$dl" "llama-cpp-python==$VERSION"
    fi
    tmp="$PREFIX/unpack.tmp"
    rm -rf "$tmp" && mkdir -p "$tmp"
    tar -xzf "$dl"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
    vendored="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
    [[ -f "$vendored/CMakeLists.txt" ]] || { echo "build_llama: no vendor/llama.cpp in the sdist" >&2; exit 2; }
    rm -rf "$PREFIX/src"
    mv "$vendored" "$PREFIX/src"
    rm -rf "$tmp"
fi

build="$PREFIX/build"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
nice cmake -S "$PREFIX/src" -B "$build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
nice cmake --build "$build" --config Release -j "$JOBS" --target "${TARGETS[@]}"

mkdir -p "$PREFIX/bin"
for t in "${TARGETS[@]}"; do
    cp "$build/bin/$t" "$PREFIX/bin/$t"
done
echo "build_llama: built ${TARGETS[*]} in $PREFIX/bin (llama.cpp from llama-cpp-python $VERSION)"
