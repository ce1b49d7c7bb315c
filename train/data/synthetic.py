"""A seeded synthetic video re-ID dataset written in the exact MARS layout.

Identities differ in clothing colours and patterns, build, hair or hat and accessories; cameras
differ in background, clutter, lighting and scale; people walk (legs and arms swing, the crop
follows them) and some tracklets are partly occluded for a run of frames. Optionally, as in
detector-made sets such as MARS, the box is off the person (`misalign`) and another pedestrian
walks beside the person, partly in the box (`neighbour_p`). Appearance alone is not
enough to match across cameras without looking at the person, and single occluded frames are
ambiguous, so both spatial attention and temporal aggregation pay off.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from train.data.mars import JUNK_PID, mars_image_name

PALETTE = np.array(
    [
        (0.80, 0.10, 0.10),  # red
        (0.95, 0.55, 0.10),  # orange
        (0.95, 0.88, 0.20),  # yellow
        (0.15, 0.60, 0.20),  # green
        (0.10, 0.60, 0.60),  # teal
        (0.15, 0.30, 0.85),  # blue
        (0.08, 0.10, 0.35),  # navy
        (0.50, 0.20, 0.65),  # purple
        (0.95, 0.50, 0.70),  # pink
        (0.92, 0.92, 0.92),  # white
        (0.50, 0.50, 0.50),  # grey
        (0.08, 0.08, 0.08),  # black
        (0.45, 0.28, 0.12),  # brown
        (0.85, 0.75, 0.55),  # beige
    ]
)
SKIN = np.array([(0.96, 0.80, 0.69), (0.87, 0.67, 0.50), (0.65, 0.45, 0.30), (0.40, 0.27, 0.18)])
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "two_tone", "logo")
BOTTOMS = ("trousers", "shorts", "skirt")
ACCESSORIES = ("none", "backpack", "shoulder_bag")
TEXTURES = ("plain", "bricks", "tiles")
MAT_HEADER = b"MATLAB 5.0 MAT-file, synthetic MARS-layout re-ID data".ljust(116, b" ")


@dataclass(frozen=True)
class Appearance:
    """What identifies a person: colours (RGB in [0, 1]), patterns, build and accessories."""

    skin: np.ndarray
    hair: np.ndarray
    top: np.ndarray
    top2: np.ndarray
    pattern: str
    bottom: np.ndarray
    bottom_style: str
    shoes: np.ndarray
    accessory: str
    accessory_colour: np.ndarray
    hat: bool
    build: float
    stature: float


@dataclass(frozen=True)
class Camera:
    """How one camera sees the scene: background, clutter, lighting and how large people appear."""

    wall: np.ndarray
    floor: np.ndarray
    horizon: float
    texture: str
    clutter: int
    gain: float
    tint: np.ndarray
    scale: float


@dataclass(frozen=True)
class Occluder:
    """Something between camera and person for frames first..stop-1: a pole, a low wall or a passer-by."""

    kind: str
    first: int
    stop: int
    colour: np.ndarray
    size: float


@dataclass(frozen=True)
class Neighbour:
    """Another pedestrian walking beside the person, partly inside the box: left or right of it by
    `offset` (a fraction of the box width), in front of the person or behind."""

    who: Appearance
    offset: float
    phase: float
    in_front: bool


@dataclass(frozen=True)
class Scene:
    """Per-tracklet state: clutter boxes, walking direction and pace, where the detector's box sits
    on the person (`shift`, `zoom`, `jitter`), and an optional occluder and neighbour."""

    clutter: list[tuple[float, float, float, float, np.ndarray]]
    direction: int
    phase: float
    pace: float
    drift: float
    light: float
    occluder: Occluder | None
    shift: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0
    jitter: float = 0.0
    neighbour: Neighbour | None = None


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.05) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _appearances(rng: np.random.Generator, count: int) -> list[Appearance]:
    """`count` appearances whose clothing signatures are pairwise different."""
    seen: set[tuple] = set()
    people = []
    while len(people) < count:
        top, top2, bottom, acc = rng.choice(len(PALETTE), 4)
        pattern = PATTERNS[rng.integers(len(PATTERNS))]
        bottom_style = BOTTOMS[rng.integers(len(BOTTOMS))]
        accessory = ACCESSORIES[rng.integers(len(ACCESSORIES))]
        hat = bool(rng.random() < 0.25)
        if pattern != "solid" and top2 == top:
            continue
        signature = (top, top2 if pattern != "solid" else -1, pattern, bottom, bottom_style, accessory, hat)
        if signature in seen:
            continue
        seen.add(signature)
        people.append(
            Appearance(
                skin=_jitter(rng, SKIN[rng.integers(len(SKIN))], 0.03),
                hair=_jitter(rng, PALETTE[rng.choice([11, 12, 13, 10, 2])], 0.05),
                top=_jitter(rng, PALETTE[top]),
                top2=_jitter(rng, PALETTE[top2]),
                pattern=pattern,
                bottom=_jitter(rng, PALETTE[bottom]),
                bottom_style=bottom_style,
                shoes=_jitter(rng, PALETTE[rng.choice([11, 9, 12, 10])], 0.05),
                accessory=accessory,
                accessory_colour=_jitter(rng, PALETTE[acc]),
                hat=hat,
                build=float(rng.uniform(0.8, 1.25)),
                stature=float(rng.uniform(0.9, 1.05)),
            )
        )
    return people


def _cameras(rng: np.random.Generator, count: int) -> list[Camera]:
    cameras = []
    for c in range(count):
        cameras.append(
            Camera(
                wall=rng.uniform(0.25, 0.75, 3),
                floor=rng.uniform(0.2, 0.6, 3),
                horizon=float(rng.uniform(0.55, 0.8)),
                texture=TEXTURES[c % len(TEXTURES)],
                clutter=(1, 4, 8)[c % 3],
                gain=(1.0, 0.75, 1.2)[c % 3] * float(rng.uniform(0.95, 1.05)),
                tint=rng.uniform(0.85, 1.15, 3),
                scale=(0.92, 0.72, 0.82)[c % 3],
            )
        )
    return cameras


def _scene(
    rng: np.random.Generator,
    camera: Camera,
    length: int,
    occlusion_p: float,
    misalign: float = 0.0,
    neighbour_p: float = 0.0,
    crowd: list[Appearance] | None = None,
) -> Scene:
    clutter = []
    for _ in range(camera.clutter):
        y0, x0 = rng.uniform(0, 0.9), rng.uniform(-0.3, 1.0)
        y1, x1 = y0 + rng.uniform(0.05, 0.4), x0 + rng.uniform(0.1, 0.5)
        clutter.append((y0, x0, y1, x1, PALETTE[rng.integers(len(PALETTE))]))
    occluder = None
    if rng.random() < occlusion_p and length > 1:
        span = max(1, int(round(length * rng.uniform(0.25, 0.6))))
        first = int(rng.integers(0, length - span + 1))
        kind = ("pole", "low_wall", "passer_by")[rng.integers(3)]
        colour = _jitter(rng, PALETTE[rng.integers(len(PALETTE))])
        occluder = Occluder(kind, first, first + span, colour, float(rng.uniform(0.3, 0.45)))
    box: dict = {}
    if misalign > 0:  # the detector's box is off the person: shifted, too large or too small
        box = dict(
            shift=(float(rng.uniform(-misalign, misalign)), float(rng.uniform(-misalign, misalign) * 0.5)),
            zoom=float(rng.uniform(1.0 - misalign, 1.0 + 0.5 * misalign)),
            jitter=misalign / 3,
        )
    if crowd and rng.random() < neighbour_p:
        side = 1 if rng.random() < 0.5 else -1
        box["neighbour"] = Neighbour(
            who=crowd[int(rng.integers(len(crowd)))],
            offset=side * float(rng.uniform(0.5, 0.7)),
            phase=float(rng.uniform(0, 2 * np.pi)),
            in_front=bool(rng.random() < 0.5),
        )
    return Scene(
        clutter=clutter,
        direction=1 if rng.random() < 0.5 else -1,
        phase=float(rng.uniform(0, 2 * np.pi)),
        pace=float(rng.uniform(0.6, 1.1)),
        drift=float(rng.uniform(-0.02, 0.02)),
        light=float(rng.uniform(0.9, 1.1)),
        occluder=occluder,
        **box,
    )


def _background(camera: Camera, scene: Scene, t: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    yy, xx = grid  # normalised image coordinates in [0, 1)
    shift = scene.direction * scene.pace * 0.04 * t
    img = np.where((yy < camera.horizon)[..., None], camera.wall * (0.8 + 0.3 * yy[..., None]), camera.floor)
    xs = xx + shift
    if camera.texture == "bricks":
        mortar = ((yy * 24) % 1 < 0.15) | (((xs * 6 + np.floor(yy * 24) * 0.5) % 1) < 0.08)
        img = np.where((mortar & (yy < camera.horizon))[..., None], img * 0.6, img)
    elif camera.texture == "tiles":
        tiles = ((np.floor(xs * 5) + np.floor(yy * 10)) % 2 == 0) & (yy >= camera.horizon)
        img = np.where(tiles[..., None], img * 0.75, img)
    for y0, x0, y1, x1, colour in scene.clutter:
        img[(yy >= y0) & (yy < y1) & (xs >= x0) & (xs < x1)] = colour * 0.85
    return img


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray | float) -> None:
    img[mask] = colour


def _draw_person(
    img: np.ndarray,
    who: Appearance,
    camera: Camera,
    scene: Scene,
    t: int,
    grid: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    offset: float = 0.0,
    phase: float | None = None,
) -> None:
    """Draw `who` into `img` where the tracklet's box puts the person, `offset` box widths to the side."""
    h, w = img.shape[:2]
    yy, xx = grid[0] * h, grid[1] * w
    phase = (scene.phase if phase is None else phase) + t * scene.pace * 1.3
    height = camera.scale * scene.zoom * who.stature * h * rng.uniform(0.97, 1.03)
    # Box jitter is drawn only where there is some: with misalign = 0 the data do not depend on the option.
    jitter = rng.uniform(-1, 1, 2) * scene.jitter if scene.jitter > 0 else np.zeros(2)
    bottom = h * (0.99 + scene.shift[1] + 0.5 * jitter[1])
    top = bottom - height - 0.02 * height * abs(np.sin(phase)) + rng.uniform(-1, 1)
    dx = scene.shift[0] + offset + scene.drift * t + rng.uniform(-0.04, 0.04) + jitter[0]
    centre = w / 2 + dx * w
    py = (yy - top) / height
    px = scene.direction * (xx - centre) / height
    b = who.build
    swing = 0.35 * np.sin(phase)

    if who.accessory == "backpack":
        _paint(img, (py > 0.19) & (py < 0.47) & (px < -0.06 * b) & (px > -0.17 * b), who.accessory_colour)
    for side in (1, -1):
        leg_x = side * 0.045 * b + side * swing * (py - 0.52) * 0.5
        leg = (py >= 0.5) & (py < 0.94) & (np.abs(px - leg_x) < 0.042 * b)
        cloth_end = 0.7 if who.bottom_style == "shorts" else 0.94
        _paint(img, leg & (py < cloth_end), who.bottom)
        _paint(img, leg & (py >= cloth_end), who.skin)
        _paint(img, (py >= 0.93) & (py < 1.0) & (np.abs(px - leg_x - 0.012) < 0.05 * b), who.shoes)
    if who.bottom_style == "skirt":
        _paint(img, (py >= 0.5) & (py < 0.72) & (np.abs(px) < (0.09 + 0.15 * (py - 0.5)) * b), who.bottom)

    torso = (py >= 0.17) & (py < 0.53) & (np.abs(px) < 0.105 * b)
    pattern = _pattern(who.pattern, py, px / b)
    _paint(img, torso & ~pattern, who.top)
    _paint(img, torso & pattern, who.top2)
    for side in (1, -1):
        arm_x = side * 0.125 * b - side * swing * (py - 0.18) * 0.4
        arm = (py >= 0.18) & (py < 0.5) & (np.abs(px - arm_x) < 0.025 * b)
        _paint(img, arm & (py < 0.44), who.top)
        _paint(img, arm & (py >= 0.44), who.skin)

    head = ((py - 0.095) / 0.075) ** 2 + (px / 0.055) ** 2 < 1
    _paint(img, head, who.skin)
    if who.hat:
        _paint(img, (py >= 0.0) & (py < 0.065) & (np.abs(px) < 0.065), who.accessory_colour)
        _paint(img, (py >= 0.05) & (py < 0.07) & (np.abs(px - 0.03) < 0.08), who.accessory_colour * 0.7)
    else:
        _paint(img, head & ((py < 0.075) | ((px < -0.03) & (py < 0.13))), who.hair)
    if who.accessory == "shoulder_bag":
        strap = (np.abs((py - 0.18) - (px + 0.1 * b) * 1.6) < 0.02) & torso
        _paint(img, strap, who.accessory_colour * 0.7)
        _paint(img, (py > 0.44) & (py < 0.58) & (px > 0.08 * b) & (px < 0.19 * b), who.accessory_colour)


def _pattern(name: str, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Where a top shows its second colour; `px` is scaled by the build."""
    if name == "hstripes":
        return (py * 22) % 1 < 0.5
    if name == "vstripes":
        return ((px + 1) * 25) % 1 < 0.5
    if name == "checks":
        return ((py * 14) % 1 < 0.5) ^ (((px + 1) * 14) % 1 < 0.5)
    if name == "two_tone":
        return py > 0.35
    if name == "logo":
        return (np.abs(py - 0.3) < 0.06) & (np.abs(px) < 0.05)
    return np.zeros(py.shape, dtype=bool)


def _draw_occluder(img: np.ndarray, scene: Scene, t: int, grid: tuple[np.ndarray, np.ndarray]) -> None:
    occluder = scene.occluder
    if occluder is None or not occluder.first <= t < occluder.stop:
        return
    yy, xx = grid
    progress = (t - occluder.first + 0.5) / (occluder.stop - occluder.first)
    if occluder.kind == "pole":
        x = 1.1 - 1.2 * progress if scene.direction > 0 else -0.1 + 1.2 * progress
        _paint(img, np.abs(xx - x) < occluder.size * 0.5, occluder.colour)
    elif occluder.kind == "low_wall":
        _paint(img, yy > 1.0 - occluder.size * 1.3, occluder.colour)
    else:
        x = -0.2 + 1.4 * progress
        body = (((yy - 0.75) / 0.6) ** 2 + ((xx - x) / (occluder.size * 0.9)) ** 2) < 1
        _paint(img, body, occluder.colour)


def _render_tracklet(
    who: Appearance | None,
    camera: Camera,
    scene: Scene,
    length: int,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """`length` uint8 frames (H, W, 3) of `who` walking through `camera`'s view (None: background only)."""
    h, w = size
    grid = (
        (np.arange(h)[:, None] + 0.5) / h * np.ones((1, w)),
        (np.arange(w)[None, :] + 0.5) / w * np.ones((h, 1)),
    )
    frames = []
    for t in range(length):
        img = _background(camera, scene, t, grid)
        near = scene.neighbour
        if near is not None and who is not None and not near.in_front:
            _draw_person(img, near.who, camera, scene, t, grid, rng, near.offset, near.phase)
        if who is not None:
            _draw_person(img, who, camera, scene, t, grid, rng)
        if near is not None and who is not None and near.in_front:
            _draw_person(img, near.who, camera, scene, t, grid, rng, near.offset, near.phase)
        _draw_occluder(img, scene, t, grid)
        img = img * (camera.gain * scene.light) * camera.tint + rng.normal(0.0, 0.02, img.shape)
        frames.append((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    return frames


def _write_mat(path: Path, key: str, value: np.ndarray) -> None:
    """savemat with a fixed header text, so the same data gives the same bytes."""
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {key: value})
    raw = bytearray(buffer.getvalue())
    raw[: len(MAT_HEADER)] = MAT_HEADER
    path.write_bytes(bytes(raw))


def generate_synthetic(
    root: str | Path,
    *,
    seed: int = 0,
    num_ids: int = 80,
    num_train_ids: int | None = None,
    num_cams: int = 3,
    min_len: int = 8,
    max_len: int = 24,
    height: int = 64,
    width: int = 32,
    extra_tracklet_p: float = 0.3,
    occlusion_p: float = 0.3,
    misalign: float = 0.0,
    neighbour_p: float = 0.0,
    num_distractors: int = 6,
    num_junk: int = 3,
    jpeg_quality: int = 90,
) -> Path:
    """Write a synthetic dataset under `root` in the MARS layout and return `root`.

    `num_ids` identities (half for training unless `num_train_ids` says otherwise) each appear in
    at least two of `num_cams` cameras, with one tracklet per camera (two with probability
    `extra_tracklet_p`) of `min_len`..`max_len` frames of `height`×`width` pixels. Test queries are
    one tracklet in each of up to two cameras per test identity, always leaving another camera in
    the gallery. pid 0 distractors and pid -1 junk tracklets go into the test set as in MARS.
    `occlusion_p`: chance that something occludes a run of a tracklet's frames; `misalign`: how far
    the detector's box is off the person (shift up to that fraction of the box, zoom by up to it);
    `neighbour_p`: chance that another pedestrian walks beside the person, partly in the box.
    The same arguments give byte-identical files.
    """
    if num_ids < 2:
        raise ValueError(f"num_ids must be at least 2, got {num_ids}")
    num_train_ids = num_ids // 2 if num_train_ids is None else num_train_ids
    if not 1 <= num_train_ids < num_ids:
        raise ValueError(f"num_train_ids must be in 1..{num_ids - 1}, got {num_train_ids}")
    if not 2 <= num_cams <= 9:
        raise ValueError(f"num_cams must be in 2..9 (one digit in MARS names), got {num_cams}")
    if num_ids > 9999 or not 0 <= num_distractors <= 9999 or num_junk < 0:
        raise ValueError(
            f"MARS names hold four-digit pids: need num_ids <= 9999, 0 <= num_distractors <= 9999 and "
            f"num_junk >= 0, got num_ids={num_ids}, num_distractors={num_distractors}, num_junk={num_junk}"
        )
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if not 0.0 <= misalign <= 0.5:
        raise ValueError(f"misalign must be in [0, 0.5], got {misalign}")
    for name, p in (("occlusion_p", occlusion_p), ("neighbour_p", neighbour_p), ("extra_tracklet_p", extra_tracklet_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    if height < 16 or width < 8:
        raise ValueError(f"images must be at least 16x8 pixels, got height={height}, width={width}")

    root = Path(root)
    rng = np.random.default_rng(seed)
    cameras = _cameras(rng, num_cams)
    people = _appearances(rng, num_ids + num_distractors)
    pids = rng.permutation(np.arange(1, num_ids + 1))
    train_pids = set(pids[:num_train_ids].tolist())

    def tracklets_of(pid: int) -> list[int]:
        present = num_cams if rng.random() < 0.6 else int(rng.integers(2, num_cams + 1))
        cams = sorted(rng.choice(num_cams, present, replace=False).tolist())
        return [c for c in cams for _ in range(1 + int(rng.random() < extra_tracklet_p))]

    # (pid, camera index, who) per tracklet, in MARS order: junk, distractors, then identities.
    plan: dict[str, list[tuple[int, int, Appearance | None]]] = {"train": [], "test": []}
    plan["test"] += [(JUNK_PID, int(rng.integers(num_cams)), None) for _ in range(num_junk)]
    plan["test"] += [(0, int(rng.integers(num_cams)), people[num_ids + i]) for i in range(num_distractors)]
    for pid in range(1, num_ids + 1):
        subset = "train" if pid in train_pids else "test"
        plan[subset] += [(pid, cam, people[pid - 1]) for cam in tracklets_of(pid)]

    # Passers-by beside a person are people outside the data set (no tracklets of their own).
    crowd = _appearances(rng, max(4, num_ids // 4)) if neighbour_p > 0 else []
    scene_options = dict(occlusion_p=occlusion_p, misalign=misalign, neighbour_p=neighbour_p, crowd=crowd)
    settings = (cameras, (min_len, max_len), (height, width), scene_options, jpeg_quality, rng)
    _write_subset(root, "train", plan["train"], *settings)
    test_rows = _write_subset(root, "test", plan["test"], *settings)
    queries = np.array([_choose_queries(test_rows, rng)], dtype=np.float64)
    _write_mat(root / "info" / "query_IDX.mat", "query_IDX", queries)
    return root


def _write_subset(
    root: Path,
    subset: str,
    plan: list[tuple[int, int, Appearance | None]],
    cameras: list[Camera],
    frame_range: tuple[int, int],
    size: tuple[int, int],
    scene_options: dict,
    jpeg_quality: int,
    rng: np.random.Generator,
) -> list[tuple[int, int, int, int]]:
    """Render and save the tracklets of `plan` under bbox_<subset>/, write its name list and table.

    Returns the table rows [start, end, pid, camera] (1-based, as MARS stores them).
    """
    names: list[str] = []
    rows: list[tuple[int, int, int, int]] = []
    counter: dict[tuple[int, int], int] = {}
    for pid, cam, who in plan:
        number = counter[(pid, cam)] = counter.get((pid, cam), 0) + 1
        length = int(rng.integers(frame_range[0], frame_range[1] + 1))
        scene = _scene(rng, cameras[cam], length, **scene_options)
        first = len(names) + 1
        for f, frame in enumerate(_render_tracklet(who, cameras[cam], scene, length, size, rng), start=1):
            name = mars_image_name(pid, cam + 1, number, f)
            target = root / f"bbox_{subset}" / name[:4] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(target, quality=jpeg_quality)
            names.append(name)
        rows.append((first, len(names), pid, cam + 1))
    (root / "info").mkdir(parents=True, exist_ok=True)
    (root / "info" / f"{subset}_name.txt").write_text("\n".join(names) + "\n")
    table = np.array(rows, dtype=np.float64)
    _write_mat(root / "info" / f"tracks_{subset}_info.mat", f"track_{subset}_info", table)
    return rows


def _choose_queries(rows: list[tuple[int, int, int, int]], rng: np.random.Generator) -> list[int]:
    """1-based test rows: per identity one tracklet in each of up to two cameras, never every camera."""
    by_pid: dict[int, dict[int, list[int]]] = {}
    for row, (_, _, pid, cam) in enumerate(rows, start=1):
        if pid > 0:
            by_pid.setdefault(pid, {}).setdefault(cam, []).append(row)
    queries = []
    for pid in sorted(by_pid):
        cams = sorted(by_pid[pid])
        chosen = rng.choice(len(cams), min(2, len(cams) - 1), replace=False)
        queries += [
            by_pid[pid][cams[i]][int(rng.integers(len(by_pid[pid][cams[i]])))] for i in sorted(chosen)
        ]
    return sorted(queries)
