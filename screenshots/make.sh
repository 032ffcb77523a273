#!/bin/sh
# Regenerate the screenshots from the fixtures with the app itself (imatui screenshot), and a PNG of
# each for viewers without SVG (the SVGs carry xml:space="preserve", so rsvg-convert keeps their
# leading spaces).
set -e
cd "$(dirname "$0")/.."
F=tests/fixtures
shot() { name=$1; shift; imatui screenshot "$@" -o "screenshots/$name.svg" --force; }
shot main $F/smollm2-prose.imatrix.gguf --view table --size 120x40
shot layers $F/smollm2-prose.imatrix.gguf --view layers --size 120x40
shot detail $F/smollm2-prose.imatrix.gguf --view detail --size 120x40
shot diff $F/smollm2-prose.imatrix.gguf --view diff --diff-with $F/smollm2-code.imatrix.gguf --size 120x40
shot narrow-80x24 $F/smollm2-prose.imatrix.gguf --view table --size 80x24
shot moe-experts-deepseek-tiny-80x24 $F/moe/deepseekv3-tiny.imatrix.gguf --view experts --size 80x24
shot moe-experts-deepseek-tiny-200x60 $F/moe/deepseekv3-tiny.imatrix.gguf --view experts --size 200x60
if [ -f /tmp/imatui-bench/deepseek.imatrix.gguf ]; then
    shot moe-layers /tmp/imatui-bench/deepseek.imatrix.gguf --view layers --size 120x40
    shot moe-experts-80x24 /tmp/imatui-bench/deepseek.imatrix.gguf --view experts --size 80x24
    shot moe-experts-200x60 /tmp/imatui-bench/deepseek.imatrix.gguf --view experts --size 200x60
fi
if command -v rsvg-convert >/dev/null; then
    for svg in screenshots/*.svg; do
        rsvg-convert -w 1400 -o "${svg%.svg}.png" "$svg"
    done
fi
# imatui serve in headless chromium (tests/test_serve_browser.py saves the page when asked to)
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    IMATUI_SERVE_SCREENSHOT="$PWD/screenshots/serve-browser.png" python -m pytest -q -p no:cacheprovider \
        tests/test_serve_browser.py
fi
