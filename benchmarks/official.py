"""fedmoap against the official pFedMoAP code (github.com/ljaiverson/pFedMoAP, built on a vendored
Dassl), side by side on the same images, settings and machine: one full round with experts each.

    python benchmarks/official.py --ref /tmp/pfedmoap-ref [--setting small|table1] [--threads 2]
        [--python PY] [--json benchmarks/results/2026-12-08-official.json] [--work DIR]

``--ref`` is a local checkout of the official repository; this script never fetches it. It copies
the checkout to a temporary folder, edits the copy so that it runs on a CPU with random weights,
writes one set of random images in CoOp's Caltech101 layout (``caltech101/101_ObjectCategories/<class>/
image_NNNN.jpg`` and ``split_zhou_Caltech101.json``) which both sides read, then runs each side
back to back in its own process: the official ``federated_main.py`` for two rounds (round 0 trains
the clients' first prompts, round 1 is the first with experts) and ``fedmoap fit`` for two rounds
(round 1 without experts, round 2 the first with them). It reports, per side, the round with
experts and the wall time from the process start to the end of that round (set-up included), the
ratios official / fedmoap of wall and of CPU time (``ratio_expert_round_s``, ``..._cpu_s``,
``ratio_to_first_expert_round_s``, ``..._cpu_s``), a Markdown table, and with ``--json`` the
numbers under the setting's key (other settings in the file are kept). fedmoap's feature cache is a
fresh folder under the work folder, so its set-up encodes every image (a cache left by an earlier
run would hide that). ``--python`` is the interpreter for the official side (it needs yacs,
tabulate, gdown, prettytable, ftfy, regex, scikit-learn, tensorboard and timm besides torch);
fedmoap runs on this interpreter.

Settings (both RN50 with random weights, 32 x 32 random JPEG images resized to 224, CoOp's
pathological split: disjoint classes per client, fp32, ``--threads`` torch threads on both sides):

- ``small``: 10 classes, 5 clients of 2 classes, 8 shots, batch 32, 5 local epochs, 5 prompts in
  the mix (the official ``--num_experts 5`` counts the client's own prompt; fedmoap's
  ``--method.num_experts 4`` does not), 10 test images per class.
- ``table1``: the paper's Table 1 (Caltech101): 100 classes (Caltech101's, CoOp's names), 10
  clients of 10 classes, 16 shots, batch 16 (the official few-shot script passes
  ``--train_batch_size ${SHOTS}``; ``configs/paper/table1_caltech101.yaml`` does the same), 5 local
  epochs, 10 prompts in the mix (K = 9), 25 test images per class (CoOp's test split of Caltech101
  has 2,465 images for 100 classes).

What the copy of the official code gets (each edit must apply exactly once, else the script stops
and names it; nothing of it is kept in fedmoap):

1. ``trainers/promptfl.py`` ``load_clip_to_cpu``: an RN50 CLIP with random weights (seed 0) built
   by the repository's own ``clip.model.CLIP`` and ``clip.build_model``, instead of downloading
   OpenAI's checkpoint (this machine cannot).
2. ``Dassl/dassl/optim/lr_scheduler.py``: the warm-up schedulers no longer pass ``verbose`` to
   ``_LRScheduler.__init__`` (torch 2.x removed the argument).
3. ``datasets/__init__.py`` is created, so that the repository's ``datasets`` folder is a regular
   package and wins over Hugging Face ``datasets`` if that is installed.
4. ``federated_main.py``: a ``BENCH`` line with the wall clock at the start and end of each round
   (the timing); round 0 runs 1 local epoch instead of 5 (it only fills the pool of experts; this
   shortens the official side's time to the first round with experts, never its round); the run
   stops after round 1.
5. The environment: ``PROJECT`` (``clip/clip.py`` reads it at import), ``OMP_NUM_THREADS`` and
   ``MKL_NUM_THREADS`` = ``--threads``; the options ``TRAINER.PFEDMOAP.PREC fp32`` (its default is
   fp16, which a CPU does not run usefully) and ``DATALOADER.NUM_WORKERS 0`` (images are decoded in
   the training process, as fedmoap does, so both sides stay on ``--threads`` cores).

Where the two sides still differ (the ratio measures the implementations with these differences):

- The official code runs RN50 on every training batch (fresh random crops and flips each step) and
  again on every test; fedmoap encodes each training image once at set-up as ``data.num_views = 4``
  cached augmented views plus the plain one, and the test images once.
- Both encode the prompts of all classes (10 or 100) on every step, the official code at 77 tokens,
  fedmoap at the truncated length with the shared prefix run once.
- The official code picks the experts by its "random" selection (a fixed permutation; its
  "nearest" branch is never called); fedmoap takes the K nearest pool entries (L2). Same count.
- The official code shares one optimizer and one learning-rate schedule across all clients and
  rounds (its cosine runs over ``MAX_EPOCH`` steps and keeps cycling); fedmoap gives each client
  its own cosine over the local epochs. The amount of work per step is the same.
- The official round tests every client after it trains; fedmoap evaluates after all clients have
  trained. Both rounds include their evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "2026-12-08-official.json"

# Caltech101's 100 classes as CoOp names them (BACKGROUND_Google and Faces_easy left out).
CALTECH101 = (
    "accordion airplane anchor ant barrel bass beaver binocular bonsai brain brontosaurus buddha butterfly camera "
    "cannon car_side ceiling_fan cellphone chair chandelier cougar_body cougar_face crab crayfish crocodile "
    "crocodile_head cup dalmatian dollar_bill dolphin dragonfly electric_guitar elephant emu euphonium ewer face "
    "ferry flamingo flamingo_head garfield gerenuk gramophone grand_piano hawksbill headphone hedgehog helicopter "
    "ibis inline_skate joshua_tree kangaroo ketch lamp laptop leopard llama lobster lotus mandolin mayfly menorah "
    "metronome minaret motorbike nautilus octopus okapi pagoda panda pigeon pizza platypus pyramid revolver rhino "
    "rooster saxophone schooner scissors scorpion sea_horse snoopy soccer_ball stapler starfish stegosaurus "
    "stop_sign strawberry sunflower tick trilobite umbrella watch water_lilly wheelchair wild_cat windsor_chair "
    "wrench yin_yang"
).split()

SETTINGS = {
    "small": {"classes": 10, "clients": 5, "shots": 8, "batch": 32, "local_epochs": 5, "prompts": 5, "test": 10},
    "table1": {"classes": 100, "clients": 10, "shots": 16, "batch": 16, "local_epochs": 5, "prompts": 10, "test": 25},
}
VAL_PER_CLASS = 2
IMAGE_PX = 32

MARKER = ("federated_main.py", "trainers/pfedmoap.py", "Dassl/dassl/engine/trainer.py")

RANDOM_CLIP = """def load_clip_to_cpu(cfg):
    # benchmarks/official.py: random weights (seed 0), no checkpoint download
    from clip.model import CLIP
    design_details = {"trainer": 'PromptFL',
                      "vision_depth": 0,
                      "language_depth": 0, "vision_ctx": 0,
                      "language_ctx": 0}
    assert cfg.MODEL.BACKBONE.NAME == "RN50", cfg.MODEL.BACKBONE.NAME
    torch.manual_seed(0)
    model = CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12, design_details)
    return clip.build_model(model.state_dict(), design_details)


def _unused_load_clip_to_cpu(cfg):"""

# (file, old, new, count): each ``old`` must occur exactly ``count`` times in the checkout.
EDITS = (
    ("trainers/promptfl.py", "def load_clip_to_cpu(cfg):", RANDOM_CLIP, 1),
    (
        "Dassl/dassl/optim/lr_scheduler.py",
        "super().__init__(optimizer, last_epoch, verbose)",
        "super().__init__(optimizer, last_epoch)",
        1,
    ),
    (
        "federated_main.py",
        "    for epoch in range(start_epoch, max_epoch):\n",
        "    for epoch in range(start_epoch, max_epoch):\n"
        '        print(f"BENCH start {epoch} {time.time()!r} {time.process_time()!r}", flush=True)\n'
        "        local_trainer.max_epoch = 1 if epoch == 0 else cfg.OPTIM.MAX_EPOCH\n",
        1,
    ),
    (
        "federated_main.py",
        '            evaluate_trainer(results, mode=args.model)\n            print("Round on server :", epoch)\n\n'
        '        elif args.model == "local":',
        '            evaluate_trainer(results, mode=args.model)\n            print("Round on server :", epoch)\n'
        '            print(f"BENCH end {epoch} {time.time()!r} {time.process_time()!r}", flush=True)\n'
        "            if epoch == 1:\n"
        "                return\n\n"
        '        elif args.model == "local":',
        1,
    ),
)

FEDMOAP_CHILD = """
import sys, time
from fedmoap.federation.rounds import Federation
_run_round = Federation.run_round
def _timed(self, t, *args, **kwargs):
    print(f"BENCH start {t} {time.time()!r} {time.process_time()!r}", flush=True)
    out = _run_round(self, t, *args, **kwargs)
    print(f"BENCH end {t} {time.time()!r} {time.process_time()!r}", flush=True)
    return out
Federation.run_round = _timed
from fedmoap.run.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Refused(Exception):
    """Bad input: one line on stderr, exit 2."""


def check_ref(ref: Path) -> str:
    """The checkout's commit (or "unknown" outside git); refuses a folder that is not pFedMoAP's."""
    if not ref.is_dir():
        raise Refused(f"--ref {ref}: no such folder")
    missing = [m for m in MARKER if not (ref / m).is_file()]
    if missing or "class PFEDMOAP" not in (ref / "trainers/pfedmoap.py").read_text(errors="replace"):
        raise Refused(f"--ref {ref} is not a pFedMoAP checkout (no {missing[0] if missing else 'class PFEDMOAP'})")
    proc = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def check_python(python: str) -> None:
    """The official side's interpreter has what its imports need."""
    mods = "yacs tabulate gdown prettytable ftfy regex sklearn tensorboard timm torch torchvision".split()
    code = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
    proc = subprocess.run([python, "-c", code, *mods], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Refused(f"--python {python}: cannot run it ({proc.stderr.strip().splitlines()[-1:]})")
    if proc.stdout.strip():
        raise Refused(f"--python {python} lacks {proc.stdout.strip()} for the official code (pip install them)")


def patched_copy(ref: Path, dest: Path) -> list[str]:
    """Copy the checkout to ``dest`` (without .git) and apply :data:`EDITS`; returns what was done."""
    shutil.copytree(ref, dest, ignore=shutil.ignore_patterns(".git"))
    done = []
    for name, old, new, count in EDITS:
        path = dest / name
        text = path.read_text()
        if text.count(old) != count:
            raise Refused(f"--ref: edit of {name} no longer applies ({text.count(old)} matches of {old[:40]!r})")
        path.write_text(text.replace(old, new))
        done.append(f"{name}: {old.strip().splitlines()[0][:60]}")
    init = dest / "datasets" / "__init__.py"
    if not init.exists():
        init.write_text("")
        done.append("datasets/__init__.py created")
    return done


def write_images(root: Path, s: dict, seed: int = 0) -> Path:
    """Random 32 x 32 JPEGs in CoOp's Caltech101 layout; returns the dataset folder."""
    import numpy as np
    from PIL import Image

    folder = root / "caltech101"
    images = folder / "101_ObjectCategories"
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CALTECH101[: s["classes"]]):
        (images / name).mkdir(parents=True)
        counts = {"train": s["shots"], "val": VAL_PER_CLASS, "test": s["test"]}
        i = 0
        for part, n in counts.items():
            for _ in range(n):
                i += 1
                rel = f"{name}/image_{i:04d}.jpg"
                Image.fromarray(rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)).save(images / rel)
                split[part].append([rel, label, name])
    (folder / "split_zhou_Caltech101.json").write_text(json.dumps(split))
    return folder


def run_timed(cmd: list[str], env: dict, cwd: Path, log: Path) -> dict:
    """Run ``cmd``; returns the wall clock and the process's CPU time at the start and end of each
    round, from its ``BENCH`` lines, and the load average before and after."""
    load_before, start = os.getloadavg()[0], time.time()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"{cmd[1]} exited {proc.returncode}; log {log}:\n{tail}")
    rounds: dict[int, dict] = {}
    for what, r, wall, cpu in re.findall(r"^BENCH (start|end) (\d+) ([\d.]+) ([\d.]+)$", text, re.M):
        rounds.setdefault(int(r), {})[what] = (float(wall), float(cpu))
    return {"launched": start, "finished": time.time(), "rounds": rounds, "load": [load_before, os.getloadavg()[0]]}


def summary(marks: dict, expert_round: int) -> dict:
    """Per side: each round's wall and CPU seconds, the round with experts, and the time from the
    process start to that round's end (set-up included; CPU: the process's CPU time by then)."""
    timed = {r: m for r, m in sorted(marks["rounds"].items()) if {"start", "end"} <= set(m)}
    if expert_round not in timed:
        raise RuntimeError(f"no timing of round {expert_round} (rounds timed: {sorted(timed)})")
    wall = {str(r): round(m["end"][0] - m["start"][0], 2) for r, m in timed.items()}
    cpu = {str(r): round(m["end"][1] - m["start"][1], 2) for r, m in timed.items()}
    end_wall, end_cpu = timed[expert_round]["end"]
    return {
        "round_s": wall,
        "round_cpu_s": cpu,
        "expert_round_s": wall[str(expert_round)],
        "expert_round_cpu_s": cpu[str(expert_round)],
        "to_first_expert_round_s": round(end_wall - marks["launched"], 2),
        "to_first_expert_round_cpu_s": round(end_cpu, 2),
        "process_s": round(marks["finished"] - marks["launched"], 2),
        "load_average_before_after": [round(x, 2) for x in marks["load"]],
    }


def official_cmd(python: str, data_root: Path, out: Path, s: dict) -> list[str]:
    return [
        python,
        "federated_main.py",
        "--model", "pFedMoAP",
        "--trainer", "PFEDMOAP",
        "--num_users", str(s["clients"]),
        "--frac", "1",
        "--round", "2",
        "--local_epochs", str(s["local_epochs"]),
        "--num_shots", str(s["shots"]),
        "--train_batch_size", str(s["batch"]),
        "--num_experts", str(s["prompts"]),
        "--sparse_selection", "nearest",  # what train.sh passes; the code calls its "random" selection anyway
        "--seed", "1",
        "--root", str(data_root),
        "--output-dir", str(out),
        "--config-file", "configs/trainers/PFEDMOAP/rn50.yaml",
        "--dataset-config-file", "configs/datasets/caltech101.yaml",
        "TRAINER.PFEDMOAP.PREC", "fp32",
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip


def fedmoap_cmd(dataset: Path, out: Path, s: dict, threads: int) -> list[str]:
    return [
        sys.executable,
        "-c", FEDMOAP_CHILD,
        "fit",
        "--config", str(REPO / "configs" / "paper" / "table1_caltech101.yaml"),
        "--data.source", f"coop:{dataset}",
        "--model.pretrained", "null",
        "--data.num_clients", str(s["clients"]),
        "--data.shots", str(s["shots"]),
        "--data.num_views", "4",
        "--data.feature_cache", str(out.parent / "feature-cache"),  # cold: set-up encodes every image
        "--train.batch_size", str(s["batch"]),
        "--train.local_epochs", str(s["local_epochs"]),
        "--method.num_experts", str(s["prompts"] - 1),
        "--fed.rounds", "2",
        "--fabric.precision", "32-true",
        "--fabric.threads", str(threads),
        "--run_dir", str(out),
        "--progress", "false",
    ]  # fmt: skip


def child_env(threads: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **extra)
    return env


def table(results: dict) -> str:
    """Markdown: per setting, the round with experts and the time to its end (set-up included),
    wall (CPU) seconds of each side and the ratios official / fedmoap."""
    lines = [
        "| setting | round with experts: official | fedmoap | ratio wall (CPU) "
        "| to its end, set-up included: official | fedmoap | ratio wall (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        o, f = r["official"], r["fedmoap"]
        cells = [name]
        for key, bold in (("expert_round", "**"), ("to_first_expert_round", "")):
            cells += [f"{side[key + '_s']:.1f} s ({side[key + '_cpu_s']:.1f} s)" for side in (o, f)]
            cells.append(f"{bold}{r[f'ratio_{key}_s']:.1f}x{bold} ({r[f'ratio_{key}_cpu_s']:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(ref: Path, setting: str, threads: int, python: str, work: Path) -> dict:
    commit = check_ref(ref)
    check_python(python)
    s = SETTINGS[setting]
    code = work / "pFedMoAP"
    edits = patched_copy(ref, code)
    dataset = write_images(work / "data", s)
    official = run_timed(
        official_cmd(python, work / "data", work / "official-out", s),
        child_env(threads, PROJECT=str(work / "project"), PYTHONPATH=str(code)),
        code,
        work / "official.log",
    )
    ours = run_timed(
        fedmoap_cmd(dataset, work / "fedmoap-run", s, threads),
        child_env(threads, PYTHONPATH=str(REPO)),
        work,
        work / "fedmoap.log",
    )
    o, f = summary(official, 1), summary(ours, 2)
    import torch

    return {
        "setting": {**s, "arch": "RN50", "weights": "random", "precision": "fp32", "threads": threads},
        "official_commit": commit,
        "official_edits": edits,
        "official": o,
        "fedmoap": f,
        **{
            f"ratio_{key}{unit}": round(o[f"{key}{unit}"] / f[f"{key}{unit}"], 2)
            for key in ("expert_round", "to_first_expert_round")
            for unit in ("_s", "_cpu_s")
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="a local checkout of ljaiverson/pFedMoAP")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="small")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on each side (default 2)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the official side")
    parser.add_argument("--json", type=Path, default=None, help=f"add the result to this file (e.g. {DEFAULT_JSON})")
    parser.add_argument("--work", type=Path, default=None, help="keep the copy, images and logs here")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        check_ref(args.ref)
        check_python(args.python)
        work = args.work or Path(tempfile.mkdtemp(prefix="official-bench-"))
        if args.work and work.exists() and any(work.iterdir()):
            raise Refused(f"--work {work} is not empty")
        work.mkdir(parents=True, exist_ok=True)
        random.seed(0)
        result = run(args.ref.resolve(), args.setting, args.threads, args.python, work.resolve())
    except Refused as exc:
        print(f"official.py: {exc}", file=sys.stderr)
        return 2
    print(table({args.setting: result}))
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else {}
        old[args.setting] = result
        args.json.write_text(json.dumps(old, indent=2) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
