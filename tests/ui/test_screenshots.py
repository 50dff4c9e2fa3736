"""`make screenshots` smoke test: the renderer writes real, non-blank PNGs of the promised size."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QColor, QImage

from clinicsync.ui.main_window import DEFAULT_SIZE
from clinicsync.ui.screenshots import SIZE, render_all


def distinct_colours(image: QImage, step: int = 16) -> int:
    return len({image.pixel(x, y) for x in range(0, image.width(), step) for y in range(0, image.height(), step)})


def mean_lightness(image: QImage, step: int = 16) -> float:
    samples = [
        QColor(image.pixel(x, y)).lightness() for x in range(0, image.width(), step) for y in range(0, 800, step)
    ]
    return sum(samples) / len(samples)


def test_the_renderer_writes_every_screen_in_both_palettes_at_1280x800_and_the_default_size(qapp, tmp_path: Path):
    palette_before = qapp.palette()
    written = render_all(tmp_path, patients=20, log=lambda _line: None)

    names = {path.name for path in written}
    assert {"overview-light.png", "overview-dark.png", "history-light.png", "history-dark.png"} <= names
    assert {"first-run-light.png", "approval-dark.png"} <= names
    default = "{}x{}".format(*DEFAULT_SIZE)
    assert {f"overview-light-{default}.png", f"mapping-dark-{default}.png", f"approval-light-{default}.png"} <= names
    assert len(names) == 2 * len([n for n in names if not n.endswith(f"-{default}.png")])
    assert sorted(names) == sorted(p.name for p in tmp_path.glob("*.png"))
    for path in written:
        image = QImage(str(path))
        assert not image.isNull(), path
        size = DEFAULT_SIZE if path.name.endswith(f"-{default}.png") else (SIZE.width(), SIZE.height())
        assert (image.width(), image.height()) == size, path
        assert distinct_colours(image) > 8, f"{path.name} looks blank"
    light, dark = QImage(str(tmp_path / "history-light.png")), QImage(str(tmp_path / "history-dark.png"))
    assert mean_lightness(light) > mean_lightness(dark) + 80  # the dark palette really is dark
    assert qapp.palette() == palette_before  # the app's own palette is restored afterwards
