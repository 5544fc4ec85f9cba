#!/usr/bin/env bash
# llama.cpp's command-line tools (llama-simple, llama-perplexity, llama-tokenize,
# llama-completion) for checking exported GGUF files, built from the llama.cpp sources
# that the llama-cpp-python 0.3.36 sdist on PyPI vendors (pinned by SHA-256; PyPI has no
# prebuilt llama.cpp binaries for Linux). CPU only, about 5 minutes on 2 cores; the build
# stays in .llama-cpp/ (ignored by git) and is reused. Prints the directory of the tools.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dir=.llama-cpp
bin="$dir/build/bin"
tools=(llama-simple llama-perplexity llama-tokenize llama-completion)
have_all() { for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if have_all; then
  echo "$root/$bin"
  exit 0
fi
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz"
mkdir -p "$dir"
sdist="$dir/llama_cpp_python-$version.tar.gz"
if ! echo "$sha256  $sdist" | sha256sum --check --status 2>/dev/null; then
  echo "downloading llama-cpp-python $version (llama.cpp sources) ..." >&2
  curl -fsSL --retry 3 -o "$sdist.partial" "$url"
  mv "$sdist.partial" "$sdist"
  echo "$sha256  $sdist" | sha256sum --check --status || {
    echo "error: $sdist does not have the pinned SHA-256" >&2
    exit 1
  }
fi
rm -rf "$dir/src"
mkdir -p "$dir/src"
tar -xzf "$sdist" -C "$dir/src" --strip-components=3 "llama_cpp_python-$version/vendor/llama.cpp"
# The sdist keeps the llama.cpp submodule's commit; its build reports "commit unknown".
tar -xzf "$sdist" -O "llama_cpp_python-$version/.git/modules/vendor/llama.cpp/HEAD" >"$dir/COMMIT"
if ! command -v cmake >/dev/null; then
  if [ ! -x "$dir/venv/bin/cmake" ]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet "cmake==4.4.5"
  fi
  export PATH="$root/$dir/venv/bin:$PATH"
fi
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DGGML_NATIVE=ON >"$dir/cmake.log" 2>&1 || {
  tail -20 "$dir/cmake.log" >&2
  exit 1
}
cmake --build "$dir/build" -j"$(nproc)" --target "${tools[@]}" >"$dir/build.log" 2>&1 || {
  tail -30 "$dir/build.log" >&2
  exit 1
}
have_all
echo "$root/$bin"
