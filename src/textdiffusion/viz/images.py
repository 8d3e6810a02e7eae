"""Pictures of a generation (Pillow and matplotlib, the ``viz`` extra): an animated GIF of the
denoising, a PNG strip of a few of its steps, and a PNG plot of the fraction decided and the mean
confidence per network call (beside the AR twin's, when given); and the forward-corruption
picture of ``viz --forward``. Colours follow the HTML player: masks light grey blocks, this
step's decisions on orange, decided tokens tinted by the step they were decided (blue early,
yellow late), tokens that will still change struck through in red.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

from ..errors import UsageError
from .story import Story

WIDTH, MARGIN, FONT_SIZE = 760, 14, 16
MAX_FRAMES = 72  # a GIF of more steps shows every k-th (and always the last)


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise UsageError("pictures need Pillow: pip install 'textdiffusion[viz]'") from None
    return Image, ImageDraw, ImageFont


def _font(size: int = FONT_SIZE):
    _, _, ImageFont = _pil()
    for name in ("DejaVuSansMono.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _rgb(h: float, light: float = 0.86, sat: float = 0.7) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(h / 360, light, sat)
    return int(r * 255), int(g * 255), int(b * 255)


def _step_colour(story: Story, position: int) -> tuple[int, int, int]:
    at = story.decided_at[position]
    f = at / (story.steps - 1) if at is not None and story.steps > 1 else 0.0
    return _rgb(240 - 200 * f)


def _layout(pieces: list[str], font, width: int) -> tuple[list[tuple[int, int, str]], int]:
    """(x, line, text) per piece wrapped at ``width``; newlines break lines. Returns the places
    and the number of lines."""
    places, x, line = [], 0, 0
    for text in pieces:
        shown = text.replace("\n", "↵")
        w = int(font.getlength(shown)) if shown else 0
        if x + w > width and x > 0:
            x, line = 0, line + 1
        places.append((x, line, shown))
        x += w
        if "\n" in text:
            x, line = 0, line + 1
    return places, line + 1


def _draw_text(draw, story: Story, step: int, font, top: int, width: int, line_height: int) -> int:
    """One step's row of ``story`` at ``top``; returns the height used."""
    states = story.states[step]
    pieces = [story.piece(t) for t in story.shown[step]]
    places, lines = _layout(pieces, font, width)
    starts = set(story.block_starts)
    for p, (x, line, text) in enumerate(places):
        x0, y0 = MARGIN + x, top + line * line_height
        w = max(int(font.getlength(text)), 2)
        box = (x0, y0, x0 + w, y0 + line_height - 2)
        state = states[p]
        colour = (30, 30, 30)
        if state == "fixed":
            draw.rectangle(box, fill=(232, 232, 232))
        elif state == "masked":
            colour = (190, 190, 190)
        elif state == "new":
            draw.rectangle(box, fill=(245, 176, 65))
        elif state == "decided":
            draw.rectangle(box, fill=_step_colour(story, p))
        elif state == "noisy":
            colour = (120, 120, 120)
        draw.text((x0, y0), text, font=font, fill=colour)
        if state == "noisy":
            mid = y0 + line_height // 2
            draw.line((x0, mid, x0 + w, mid), fill=(200, 30, 30), width=1)
        if p in starts:
            draw.line((x0 - 1, y0, x0 - 1, y0 + line_height - 2), fill=(44, 123, 229), width=2)
    return lines * line_height


def _height(story: Story, font, width: int, line_height: int) -> int:
    return max(_layout([story.piece(t) for t in story.shown[i]], font, width)[1] for i in range(story.steps)) * line_height


def frame_image(story: Story, step: int, font=None, height: int | None = None):
    """One step as a Pillow image: a caption line, then the text."""
    Image, ImageDraw, _ = _pil()
    font = font or _font()
    lh = int(font.size * 1.45) if hasattr(font, "size") else 22
    body = height if height is not None else _height(story, font, WIDTH - 2 * MARGIN, lh)
    img = Image.new("RGB", (WIDTH, body + 2 * MARGIN + lh), "white")
    draw = ImageDraw.Draw(img)
    caption = (f"{story.title or story.process + ' / ' + story.sampler}   step {step + 1}/{story.steps}   "
               f"{story.nfe[step]} network calls   {100 * story.fraction[step]:.0f}% decided")
    draw.text((MARGIN, MARGIN // 2), caption, font=font, fill=(90, 90, 90))
    _draw_text(draw, story, step, font, MARGIN // 2 + lh + 4, WIDTH - 2 * MARGIN, lh)
    return img


def steps_to_show(steps: int, most: int) -> list[int]:
    if steps <= most:
        return list(range(steps))
    picked = sorted({round(i * (steps - 1) / (most - 1)) for i in range(most)})
    return picked


def write_gif(story: Story, path: str | Path, ms_per_step: int = 160, hold_ms: int = 2000) -> Path:
    """An animated GIF, one frame per step (at most MAX_FRAMES), the last held ``hold_ms``."""
    font = _font()
    lh = int(font.size * 1.45)
    height = _height(story, font, WIDTH - 2 * MARGIN, lh)
    frames = [frame_image(story, i, font, height) for i in steps_to_show(story.steps, MAX_FRAMES)]
    durations = [ms_per_step] * (len(frames) - 1) + [hold_ms]
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=True)
    return path


def write_strip(story: Story, path: str | Path, count: int = 8) -> Path:
    """``count`` evenly spaced steps (the first and the last included) stacked in one PNG."""
    Image, _, _ = _pil()
    font = _font()
    lh = int(font.size * 1.45)
    height = _height(story, font, WIDTH - 2 * MARGIN, lh)
    images = [frame_image(story, i, font, height) for i in steps_to_show(story.steps, count)]
    strip = Image.new("RGB", (WIDTH, sum(im.height for im in images) + len(images) - 1), (200, 200, 200))
    y = 0
    for im in images:
        strip.paste(im, (0, y))
        y += im.height + 1
    path = Path(path)
    strip.save(path)
    return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'textdiffusion[viz]'") from None
    return plt


def write_plot(story: Story, path: str | Path, ar: Story | None = None) -> Path:
    """Fraction decided and mean confidence of each step's decisions, against network calls
    (the AR twin's fraction decided beside it: parallel decoding is the gap)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    ax.plot(story.nfe, story.fraction, color="#2c7be5", lw=2, label=f"decided: {story.title or story.sampler}")
    conf = [(n, c) for n, c in zip(story.nfe, story.mean_confidence) if c is not None]
    if conf:
        ax.plot(*zip(*conf), color="#d35400", lw=1.5, ls="--", label="mean confidence of the step's decisions")
    if ar is not None:
        ax.plot(ar.nfe, ar.fraction, color="#555", lw=2, label=f"decided: {ar.title or 'AR twin'}")
    ax.set_xlabel("network calls")
    ax.set_ylabel("fraction / probability")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{story.process} process, {story.sampler} sampler: {story.length} positions", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_forward(columns: dict[str, list[list[str]]], times: list[float], path: str | Path,
                  title: str = "") -> Path:
    """The forward-corruption picture: one column per process, one row per time t (0 at the top:
    the clean text; 1 at the bottom: the prior), each cell the corrupted text's pieces (masks as
    blocks)."""
    Image, ImageDraw, _ = _pil()
    font, small = _font(14), _font(12)
    lh = 20
    col_w = 360
    label_w = 64
    heights = []
    for i in range(len(times)):
        heights.append(max(_layout(col[i], font, col_w - 16)[1] for col in columns.values()) * lh + 10)
    W = label_w + col_w * len(columns)
    H = 40 + sum(heights)
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((8, 4), title, font=small, fill=(90, 90, 90))
    for k, name in enumerate(columns):
        draw.text((label_w + k * col_w + 8, 20), name, font=font, fill=(20, 20, 20))
    y = 40
    for i, t in enumerate(times):
        draw.line((0, y, W, y), fill=(220, 220, 220))
        draw.text((8, y + 4), f"t = {t:.1f}", font=small, fill=(90, 90, 90))
        for k, col in enumerate(columns.values()):
            places, _ = _layout(col[i], font, col_w - 16)
            for x, line, text in places:
                colour = (190, 190, 190) if text == "░" else (30, 30, 30)
                draw.text((label_w + k * col_w + 8 + x, y + 5 + line * lh), text, font=font, fill=colour)
        y += heights[i]
    for k in range(len(columns)):
        draw.line((label_w + k * col_w, 20, label_w + k * col_w, H), fill=(220, 220, 220))
    path = Path(path)
    img.save(path)
    return path
