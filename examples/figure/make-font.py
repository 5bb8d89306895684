#!/usr/bin/env python3
"""Makes DejaVuSans-subset.ttf, the font of the examples' figures, from DejaVu Sans.

    python3 -m venv /tmp/ft && /tmp/ft/bin/pip install fonttools
    /tmp/ft/bin/python examples/figure/make-font.py /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

Two steps (see LICENSE-DejaVu.txt):

1. pyftsubset keeps the characters below, without hinting, with the legacy `kern` table (the
   kerning ab_glyph reads) and the whole `name` table (the font's name and licence).
2. Every glyph is made a simple glyph (composites such as the accented letters are
   decomposed), and every glyph whose outline starts right of x = 0 gets a one-point contour
   at x = 0, which draws nothing. plotters 0.3.7 draws each glyph of a text at its pen
   position without the glyph's left side bearing (it places the rasterised outline's bounding
   box, not the outline, at the pen), which spaces the letters unevenly ("1 0,000"); with the
   bounding box starting at x = 0 the outline lands where it should. Glyphs that reach left of
   x = 0 (J, j, T, Y, the underscore, some accented i) keep their outlines: they are drawn at
   most 0.05 em to the right of their place.
"""
import subprocess
import sys
from pathlib import Path

from fontTools.pens.recordingPen import DecomposingRecordingPen
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fontTools.ttLib import TTFont

UNICODES = ",".join(
    [
        "U+0020-007E",  # ASCII
        "U+00A0-00FF",  # Latin-1 (² ³ ± × · ° µ ...)
        "U+0391-03A1,U+03A3-03A9,U+03B1-03C9",  # Greek
        "U+2009,U+202F",  # thin spaces
        "U+2010-2014,U+2018-201D,U+2026",  # dashes, quotes, ellipsis
        "U+2070,U+2074-2079,U+2080-2089",  # superscript and subscript digits
        "U+2090-209C",  # subscript letters
        "U+2190-2193",  # arrows
        "U+2212,U+221A,U+221E,U+2248,U+2264,U+2265",  # minus, root, infinity, ≈ ≤ ≥
    ]
)


def main(source: str) -> None:
    out = Path(__file__).with_name("DejaVuSans-subset.ttf")
    subset = [
        Path(sys.executable).with_name("pyftsubset"),
        source,
        f"--output-file={out}",
        f"--unicodes={UNICODES}",
        "--no-hinting",
        "--legacy-kern",
        "--layout-features=",
        "--drop-tables+=GPOS,GSUB,GDEF,MATH,FFTM",
        "--name-IDs=*",
        "--name-legacy",
        "--name-languages=*",
    ]
    subprocess.run([str(a) for a in subset], check=True)

    font = TTFont(out)
    glyf, hmtx = font["glyf"], font["hmtx"]
    glyph_set = font.getGlyphSet()
    # Decompose the composites (into new glyph objects, then swap them in).
    decomposed = {}
    for name in font.getGlyphOrder():
        if glyf[name].isComposite():
            recording = DecomposingRecordingPen(glyph_set)
            glyph_set[name].draw(recording)
            pen = TTGlyphPen(None)
            recording.replay(pen)
            decomposed[name] = pen.glyph()
    for name, glyph in decomposed.items():
        glyf[name] = glyph
    # A one-point contour at x = 0 in every glyph that starts right of it.
    moved = 0
    for name in font.getGlyphOrder():
        glyph = glyf[name]
        if glyph.numberOfContours <= 0:
            continue
        glyph.recalcBounds(glyf)
        if glyph.xMin <= 0:
            continue
        glyph.coordinates.append((0, glyph.yMin))
        glyph.flags.append(1)  # on the curve
        glyph.endPtsOfContours.append(len(glyph.coordinates) - 1)
        glyph.numberOfContours += 1
        glyph.recalcBounds(glyf)
        advance, _ = hmtx[name]
        hmtx[name] = (advance, glyph.xMin)
        moved += 1
    font.save(out)
    print(f"{out}: {out.stat().st_size} bytes, {len(decomposed)} composites decomposed, "
          f"{moved} glyphs given a point at x = 0")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
