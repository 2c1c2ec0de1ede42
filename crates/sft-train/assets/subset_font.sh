#!/usr/bin/env bash
# Writes DejaVuSans-ascii.ttf beside this script: DejaVu Sans (Debian's fonts-dejavu-core,
# /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf) cut down to printable ASCII with fontTools'
# pyftsubset, so the loss-curve plot has a font in the binary at ~20 KB instead of 760 KB.
# DejaVu's licence (Bitstream Vera + public domain changes) allows this; it is in
# DejaVuSans-LICENSE.txt beside the font.
#   pip install fonttools && bash crates/sft-train/assets/subset_font.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pyftsubset /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
  --unicodes=U+0020-007E --layout-features='' --no-hinting --desubroutinize \
  --name-IDs='*' --output-file="$here/DejaVuSans-ascii.ttf"
awk '/^Files: \*/{f=1} /^Files: debian/{f=0} f' /usr/share/doc/fonts-dejavu-core/copyright | sed 's/^ \.$//; s/^ //' >"$here/DejaVuSans-LICENSE.txt"
