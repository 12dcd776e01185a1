"""A deterministic crop-season simulator that writes CSVs in the user's schema.

Why: the default run, the tests and the tuner's smoke searches must exercise the very loader
that real data goes through, offline and without the user's files. So the simulator writes
ordinary CSV files (`id`, `county`, `{band}_{NN}`, `y{YYYY}`) and nothing reads its internals.

The season model is deliberately simple but has the structure a yield model must find:
- each field has latent vigour, sowing delay, early water stress and a late-season shock;
- each year has a weather effect that shifts timing, amplitude and yield for all its fields;
- a double-logistic "greenness" curve rises after sowing and senesces later; vegetation
  bands (ndvi, evi, NIR, RVI) follow it, red/blue/SWIR1 move the opposite way, SWIR1 also
  rises with water stress;
- yield depends on the latents, most of which show in the first 12 steps (green-up timing,
  speed and level, early stress), plus a late shock and noise that no early window can see.
  A ridge regression on the first 12 steps therefore explains most but not all of the yield
  variance (test R^2 about 0.75), while predicting the mean explains none.
- about 1 % of fields fail (yield <= 0.1, almost no green-up) so the drop rule is exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from timesclip.errors import DataError

SYNTHETIC_BANDS = ["NIR", "RVI", "SWIR1", "blue", "evi", "ndvi", "red"]
#: Bump when the simulator's output changes, so old caches are never mixed with new code.
SYNTHETIC_VERSION = "synthetic-v1"
DEFAULT_YEARS = tuple(range(2015, 2021))
DEFAULT_N_PER_YEAR = 250
DEFAULT_N_STEPS = 36
DEFAULT_SEED = 0
_MANIFEST = "MANIFEST.json"
_COUNTIES = ["Adams", "Boone", "Cass", "Clay", "Dale", "Fulton", "Grant", "Hardin", "Knox",
             "Logan", "Marion", "Perry", "Pike", "Scott", "Union", "Warren"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def simulate_year(year: int, n: int, n_steps: int = DEFAULT_N_STEPS,
                  seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """One season's table (id, county, band columns, y{year}); a pure function of its args.

    Each year draws from its own generator seeded by (seed, year), so a year's rows do not
    depend on which other years are generated.
    """
    if n < 1 or n_steps < 1 or n_steps > 100:
        raise ValueError("need n >= 1 and 1 <= n_steps <= 100 (two-digit step index)")
    rng = np.random.default_rng([seed, year])
    weather = rng.normal()  # year effect: > 0 a good season (earlier, greener, higher yield)
    vigour = rng.normal(size=n)  # [n] field fertility / crop vigour
    sow = rng.normal(size=n)  # [n] sowing delay (in ~steps)
    stress = rng.normal(size=n)  # [n] early water stress (dry soil)
    late = rng.normal(size=n)  # [n] late-season shock (hail, heat at flowering): unseen early

    # season time in units of a 36-step (ten-day) season, so other lengths stretch the curve
    tt = np.arange(n_steps)[None, :] * (36.0 / n_steps)  # [1, T]
    up_mid = (7.5 + 1.3 * sow - 0.6 * weather + 0.3 * stress)[:, None]  # [n, 1]
    up_rate = np.clip(0.55 + 0.10 * vigour - 0.05 * stress, 0.2, 1.2)[:, None]
    down_mid = up_mid + (13.0 + 0.8 * weather - 0.8 * stress - 1.2 * late)[:, None]
    amp = np.clip(0.60 + 0.08 * vigour - 0.06 * stress + 0.04 * weather, 0.15, 0.9)[:, None]

    n_fail = max(1, round(0.01 * n)) if n >= 20 else 0
    failed = np.zeros(n, dtype=bool)
    failed[rng.choice(n, size=n_fail, replace=False)] = True
    amp = np.where(failed[:, None], amp * 0.2, amp)

    green = amp * (_sigmoid(up_rate * (tt - up_mid)) - _sigmoid(0.45 * (tt - down_mid)))
    green = np.clip(green, 0.0, None)  # [n, T] fraction of green cover

    def noise(sd: float) -> np.ndarray:
        return rng.normal(scale=sd, size=green.shape)  # [n, T]

    # occasional residual cloud: brighter visible bands, depressed vegetation indices
    cloud = (rng.random(green.shape) < 0.03) * rng.uniform(0.3, 1.0, size=green.shape)
    stress_t = stress[:, None] * (0.6 + 0.4 * tt / 36.0)  # [n, T] stress shows more later
    ndvi = 0.17 + 0.95 * green - 0.25 * cloud + noise(0.02)
    evi = 0.10 + 0.75 * green - 0.15 * cloud + noise(0.02)
    nir = 0.22 + 0.30 * green + 0.05 * cloud + noise(0.012)
    red = np.clip(0.14 - 0.11 * green + 0.10 * cloud + noise(0.006), 0.015, None)
    blue = np.clip(0.09 - 0.05 * green + 0.12 * cloud + noise(0.005), 0.01, None)
    swir1 = 0.30 - 0.12 * green + 0.03 * stress_t + 0.05 * cloud + noise(0.01)
    rvi = nir / red
    values = {"NIR": nir, "RVI": rvi, "SWIR1": swir1, "blue": blue, "evi": evi,
              "ndvi": ndvi, "red": red}

    y = (7.2 + 1.3 * vigour - 0.45 * np.abs(sow) - 0.9 * stress + 0.6 * weather
         - 0.7 * late + rng.normal(scale=0.5, size=n))
    y = np.clip(y, 1.0, 14.0)
    y = np.where(failed, rng.uniform(0.0, 0.1, size=n), y)  # failed fields: <= 0.1

    cols: dict[str, object] = {
        "id": [f"F{year}-{i:04d}" for i in range(n)],
        "county": rng.choice(_COUNTIES, size=n),
    }
    for band in SYNTHETIC_BANDS:
        for t in range(n_steps):
            cols[f"{band}_{t:02d}"] = np.round(values[band][:, t], 5)
    cols[f"y{year}"] = np.round(y, 3)
    return pd.DataFrame(cols)


def write_synthetic(out_dir: str | Path, *, years: Sequence[int] = DEFAULT_YEARS,
                    n_per_year: int = DEFAULT_N_PER_YEAR, n_steps: int = DEFAULT_N_STEPS,
                    seed: int = DEFAULT_SEED) -> list[Path]:
    """Write one CSV per year, `synthetic_{year}.csv`, into out_dir; returns their paths.

    The bytes are a deterministic function of the arguments; each file is written to a
    temporary name and renamed, so a reader never sees half a file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for year in years:
        frame = simulate_year(int(year), n_per_year, n_steps, seed)
        path = out / f"synthetic_{int(year)}.csv"
        tmp = out / f".{path.name}.{os.getpid()}.tmp"
        try:
            frame.to_csv(tmp, index=False, lineterminator="\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def cache_root() -> Path:
    """$TIMESCLIP_CACHE, else ~/.cache/timesclip."""
    env = os.environ.get("TIMESCLIP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "timesclip"


def default_synthetic_paths() -> list[Path]:
    """The built-in data set (6 years x 250 fields x 36 steps), generated once per cache.

    Generated into a private temporary directory, with a manifest of sha256 sums, then
    renamed into place: concurrent processes (parallel trials) either see the complete
    directory or none; the loser of a race discards its copy. A cached directory whose
    files do not match its manifest is rebuilt.
    """
    root = cache_root()
    final = root / SYNTHETIC_VERSION
    names = [f"synthetic_{y}.csv" for y in DEFAULT_YEARS]
    if _complete(final, names):
        return [final / n for n in names]
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SYNTHETIC_VERSION}.", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by other users
    except OSError as exc:
        raise DataError(f"cannot write the synthetic data set under {root} "
                        f"({exc.strerror or exc}); set TIMESCLIP_CACHE to a writable "
                        "directory") from None
    try:
        paths = write_synthetic(tmp)
        manifest = {p.name: _sha256(p) for p in paths}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if final.exists() and not _complete(final, names):
            # a damaged cache (files edited or deleted): move it aside, then replace it
            trash = Path(tempfile.mkdtemp(prefix=f".{SYNTHETIC_VERSION}.old.", dir=root))
            try:
                os.replace(final, trash / "old")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final, names):  # not a lost race: a real failure
                raise
    except OSError as exc:
        raise DataError(f"cannot write the synthetic data set to {final} "
                        f"({exc.strerror or exc}); set TIMESCLIP_CACHE to a writable "
                        "directory") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [final / n for n in names]


def _complete(folder: Path, names: list[str]) -> bool:
    """True when the folder holds every expected file with the sha256 its manifest records."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        return (sorted(manifest) == sorted(names)
                and all(_sha256(folder / n) == manifest[n] for n in names))
    except (OSError, ValueError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = ["SYNTHETIC_BANDS", "SYNTHETIC_VERSION", "cache_root", "default_synthetic_paths",
           "simulate_year", "write_synthetic"]
