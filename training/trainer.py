"""The training loop shared by every method (see training/README.md for the method contract).

Step-based: sample ``k`` of the run (global over steps and ranks) is item ``perm_e[k mod N]`` of
epoch ``e = k // N`` (``perm_e`` seeded by (seed, e)) with its own seed; so the data of a step
depends only on the step, and ``--resume`` reproduces an uninterrupted run exactly (model,
optimizer, scheduler and RNG states come from the checkpoint).
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from hndesc_features.config import check_keys, merge
from hndesc_features.models.checkpoints import (
    CheckpointError, atomic_save, build_model, check_state_dict, export_weights, safe_load,
)

from . import distributed as D
from .datasets import build_dataset

logger = logging.getLogger("hndesc_features.training")

CKPT_FORMAT = "hndesc_features.train_checkpoint/1"
CKPT_NAME = "checkpoint_last.pt"

DEFAULT_TRAIN = {
    "seed": 0,
    "steps": 1000,
    "batch_size": 8,  # global (split over DDP ranks)
    # data workers per process: an int (capped at the cores this process may use), or "auto": those
    # cores minus one for the training loop, at most 16 (num_workers_for)
    "num_workers": 0,
    "threads": None,  # torch.set_num_threads per process (None: leave torch's default)
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_groups": {},  # {parameter-name prefix: lr}, e.g. {mlp: 1.0e-4}; the other parameters use lr
    "weight_decay": 0.0,
    "lr_schedule": {"type": "constant", "warmup": 0, "start": 0.5, "final": 0.1, "step_size": 1000,
                    "gamma": 0.5},
    "grad_clip": None,
    "log_every": 10,
    "val_every": 200,
    "checkpoint_every": 100,
    "stop_after": None,  # stop this process after this global step (a resumable interruption)
    "val_at_start": False,  # also validate the initial model (step 0)
    "plot": True,
    "export": "last",  # "last" | "best": the exported weights are the last step's or the best validation's
    # > 0: before every validation and before the export, the batch-norm statistics are re-estimated as
    # the plain average over this many fixed training batches (drawn once, apart from the training
    # stream), instead of the momentum average of the last few steps. With the default momentum
    # average the validation of a BN model moves with the last batches even when no weight changes
    # (docs/hndesc.md); 0: off (models without BN are never touched)
    "precise_bn": 0,
    # fine-tuning: start from an exported weights file (`python -m hndesc_features.training.export`, or a shipped one by
    # its file name, e.g. hndesc_patch.pt) instead of the initialisation; its architecture must fit the
    # model conf (checked). --resume ignores it: the checkpoint wins.
    "init_weights": None,
    # ---- GPU path (every option is a no-op on CPU unless said otherwise)
    # mixed precision: false | auto (CUDA: bf16 where the GPU supports it, else fp16 with loss scaling;
    # CPU: off) | bf16 (also on CPU: bf16 autocast) | fp16 (CUDA only, with loss scaling)
    "amp": False,
    "cudnn_benchmark": True,  # CUDA: cudnn picks the fastest kernels for the (fixed) crop size
    "channels_last": False,  # CUDA: NHWC weights (faster convolutions under AMP, e.g. the CAPS ResNet)
    "sync_bn": False,  # DDP on CUDA: batch-norm statistics over the global batch
    "find_unused_parameters": False,  # DDP: a model with parameters its forward does not use (CAPS conv_coarse)
}


# ----------------------------------------------------------------------------- method plumbing
LOSS_ALIASES = {"wlrn": "kcc"}


def load_method(name: str):
    """A method's training pieces: ``Loss`` from training/losses/<name>.py, ``prepare`` / ``collate``
    from training/pipelines/<name>.py (when the method has its own data pipeline)."""
    from types import SimpleNamespace

    name = LOSS_ALIASES.get(name, name)
    try:
        module = importlib.import_module(f"{__package__}.losses.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.losses.{name}":
            raise ValueError(f"Unknown loss/method '{name}': no training/losses/{name}.py") from None
        raise
    if not hasattr(module, "Loss"):
        raise ValueError(f"training/losses/{name}.py must define a `Loss` class (see training/README.md)")
    try:
        pipeline = importlib.import_module(f"{__package__}.pipelines.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.pipelines.{name}":
            raise
        pipeline = None
    pick = lambda attr: getattr(pipeline, attr, None) if pipeline is not None else getattr(module, attr, None)  # noqa: E731
    return SimpleNamespace(name=name, Loss=module.Loss, loss_module=module, pipeline=pipeline,
                           prepare=pick("prepare"), collate=pick("collate"))


class PreparedDataset(torch.utils.data.Dataset):
    """Dataset item → method's `prepare(sample, conf)` (runs in the data workers)."""

    def __init__(self, dataset, prepare=None, conf=None):
        self.dataset, self.prepare, self.conf = dataset, prepare, conf

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        sample = self.dataset[key]
        return self.prepare(sample, self.conf) if self.prepare is not None else sample


class StepBatchSampler(torch.utils.data.Sampler):
    """Infinite batches of (index, seed) keys for this rank, starting at `start_step`."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0):
        if batch_size % world:
            raise ValueError(f"train.batch_size={batch_size} is not divisible by the {world} processes")
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.start_step = start_step
        self._perm_epoch, self._perm = None, None

    def key(self, k: int) -> tuple[int, int]:
        epoch, pos = divmod(k, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)
            self._perm_epoch = epoch
        sample_seed = int(np.random.default_rng([self.seed, k, 11]).integers(2**31))
        return int(self._perm[pos]), sample_seed

    def batch(self, step: int) -> list:
        local = self.bs // self.world
        k0 = step * self.bs + self.rank * local
        return [self.key(k) for k in range(k0, k0 + local)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1


def batchnorm_layers(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_batchnorm(model: torch.nn.Module, forward, batches) -> int:
    """Re-estimate every batch-norm layer's running statistics as the plain (cumulative) average
    over ``batches``: ``forward(model, batch)`` runs the model in training mode on each batch.
    Returns the number of BN layers updated (0: nothing to do). The model's mode is restored."""
    bns = batchnorm_layers(model)
    if not bns or not batches:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches
    model.train()
    try:
        for b in batches:
            forward(model, b)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


def default_collate(samples: list[dict]) -> dict:
    from .datasets.megadepth import collate_pairs

    return collate_pairs(samples)


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    return batch


def lr_lambda(conf: dict, total: int):
    s = conf["lr_schedule"]
    kind, warmup = s.get("type", "constant"), int(s.get("warmup", 0) or 0)

    def f(step: int) -> float:
        w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if kind == "constant":
            return w
        if kind == "step":
            return w * s.get("gamma", 0.5) ** (step // max(1, int(s.get("step_size", 1000))))
        start = int(float(s.get("start", 0.5)) * total)  # decay starts at this fraction of training
        if step < start:
            return w
        t = (step - start) / max(1, total - start)
        final = float(s.get("final", 0.1))
        if kind == "exp":
            return w * final ** t
        if kind == "cosine":
            return w * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t)))
        if kind == "linear":
            return w * (1 - (1 - final) * t)
        raise ValueError(f"Unknown lr_schedule.type '{kind}' (constant, step, exp, cosine, linear)")

    return f


def param_groups(model, loss_fn, lr: float, lr_groups: dict) -> list[dict]:
    """Adam parameter groups: one per `lr_groups` prefix (in order), the rest at `lr`. A prefix
    set to null is dropped (a derived config removing its base's group)."""
    lr_groups = {k: v for k, v in (lr_groups or {}).items() if v is not None}
    groups = {prefix: [] for prefix in lr_groups}
    rest = []
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    for n, p in named:
        if not p.requires_grad:
            continue
        prefix = next((q for q in lr_groups if n.startswith(q)), None)
        (groups[prefix] if prefix is not None else rest).append(p)
    out = [{"params": rest, "lr": lr}] if rest else []
    for prefix, ps in groups.items():
        if not ps:
            raise ValueError(f"train.lr_groups: no parameter name starts with '{prefix}'")
        out.append({"params": ps, "lr": float(lr_groups[prefix])})
    return out


# ----------------------------------------------------------------------------- RNG state
def get_rng_state() -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    return {
        "python_version": int(py[0]), "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": float(py[2]) if py[2] is not None else None,
        "numpy_state": torch.from_numpy(npst[1].astype(np.int64)), "numpy_pos": int(npst[2]),
        "numpy_has_gauss": int(npst[3]), "numpy_gauss": float(npst[4]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict) -> None:
    random.setstate((s["python_version"], tuple(int(x) for x in s["python_state"].tolist()),
                     s["python_gauss"]))
    np.random.set_state(("MT19937", s["numpy_state"].numpy().astype(np.uint32), s["numpy_pos"],
                         s["numpy_has_gauss"], s["numpy_gauss"]))
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and s.get("cuda"):
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint(path, arch: Optional[str] = None) -> dict:
    ck = safe_load(path, "checkpoint")
    if ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this trainer "
                              f"(format {ck.get('format')!r}, expected {CKPT_FORMAT!r})")
    for k in ("model", "optimizer", "step", "config", "arch"):
        if k not in ck:
            raise CheckpointError(f"checkpoint '{path}' lacks '{k}': incomplete file")
    if arch is not None and ck["arch"] != arch:
        raise CheckpointError(f"checkpoint '{path}' was written for architecture '{ck['arch']}', "
                              f"but this config trains '{arch}'")
    return ck


def _strip(conf: dict) -> dict:
    return {k: v for k, v in conf.items() if k != "name"}


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, conf: dict, output, resume: bool = False, overwrite: bool = False):
        self.conf = conf = dict(conf)
        check_keys(conf, ("name", "data", "model", "loss", "train", "val"), "training config")
        conf["train"] = merge(DEFAULT_TRAIN, conf.get("train"), "train")
        self.tc = conf["train"]
        self.output = Path(output)
        self.rank, self.world, self.device = D.setup()
        self.main = self.rank == 0
        if self.tc["threads"]:
            limit_threads(int(self.tc["threads"]))
        self.arch = conf["model"]["name"]
        self.method = load_method(conf["loss"]["name"])
        ckpt_path = self.output / CKPT_NAME
        ck = None
        if resume:
            if not ckpt_path.exists():
                raise CheckpointError(f"--resume: no checkpoint at '{ckpt_path}'")
            ck = load_checkpoint(ckpt_path, self.arch)
            old_model = _strip(ck["config"].get("model", {}))
            if old_model != _strip(conf["model"]):
                raise CheckpointError(f"--resume: the checkpoint's model conf {old_model} differs from "
                                      f"the config's {_strip(conf['model'])}")
        elif ckpt_path.exists() and not overwrite:
            raise FileExistsError(f"'{self.output}' already holds a run: pass --resume to continue it "
                                  f"or choose another --output")
        elif overwrite and self.main:  # a fresh run in an old folder: its logs start over
            import shutil

            (self.output / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(self.output / "tb", ignore_errors=True)
        seed_everything(int(self.tc["seed"]) + self.rank)

        self.model = build_model(self.arch, _strip(conf["model"])).to(self.device)
        if ck is None and self.tc.get("init_weights"):
            self._init_from(self.tc["init_weights"])
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = bool(self.tc["cudnn_benchmark"])
            if self.tc["channels_last"]:
                self.model = self.model.to(memory_format=torch.channels_last)
            if self.tc["sync_bn"] and self.world > 1:
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.amp_dtype = amp_dtype(self.tc["amp"], self.device)
        # loss scaling for fp16 only (bf16 has float32's range); disabled it is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = self.method.Loss(conf["loss"]).to(self.device)
        params = param_groups(self.model, self.loss_fn, float(self.tc["lr"]), self.tc.get("lr_groups") or {})
        if self.tc["optimizer"].lower() == "adam":
            self.opt = torch.optim.Adam(params, lr=float(self.tc["lr"]), weight_decay=float(self.tc["weight_decay"]))
        elif self.tc["optimizer"].lower() == "adamw":
            self.opt = torch.optim.AdamW(params, lr=float(self.tc["lr"]), weight_decay=float(self.tc["weight_decay"]))
        elif self.tc["optimizer"].lower() == "rmsprop":  # Markuš et al. (wlrn) train with RMSprop
            self.opt = torch.optim.RMSprop(params, lr=float(self.tc["lr"]), weight_decay=float(self.tc["weight_decay"]))
        else:
            raise ValueError(f"Unknown optimizer '{self.tc['optimizer']}' (adam, adamw, rmsprop)")
        self.total = int(self.tc["steps"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.tc, self.total))
        self.step = 0
        self.elapsed = 0.0
        self.best = None
        if ck is not None:
            check_state_dict(self.model, ck["model"], f"checkpoint '{ckpt_path}'")
            self.model.load_state_dict(ck["model"])
            if "loss" in ck and ck["loss"]:
                self.loss_fn.load_state_dict(ck["loss"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            if ck.get("scaler") and self.scaler.is_enabled():  # a GPU fp16 run resumed on CPU drops it
                self.scaler.load_state_dict(ck["scaler"])
            self.step = int(ck["step"])
            self.elapsed = float(ck.get("elapsed", 0.0))
            self.best = ck.get("best")
            rngs = ck.get("rng") or []
            if len(rngs) == self.world:
                set_rng_state(rngs[self.rank])
            elif rngs:
                logger.warning("checkpoint has RNG states of %d processes, this run has %d: reseeding",
                               len(rngs), self.world)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(self.tc["find_unused_parameters"]))

        self.dataset = build_dataset(conf["data"], "train")
        prepared = PreparedDataset(self.dataset, getattr(self.method, "prepare", None), conf)
        collate = getattr(self.method, "collate", None) or getattr(self.dataset, "collate", None) \
            or default_collate
        self._prepared, self._collate, self._pbn_batches = prepared, collate, None
        self.sampler = StepBatchSampler(len(self.dataset), int(self.tc["batch_size"]), int(self.tc["seed"]),
                                        self.rank, self.world, self.step)
        nw = num_workers_for(self.tc["num_workers"], int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        self.num_workers = nw
        self.loader = torch.utils.data.DataLoader(
            prepared, batch_sampler=self.sampler, num_workers=nw, collate_fn=collate,
            worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(int(self.tc["seed"])),
            persistent_workers=False, prefetch_factor=(4 if cuda else 2) if nw > 0 else None,
            pin_memory=cuda)  # page-locked host memory only where an accelerator reads it

        self.val_conf = conf.get("val", {}) or {}
        self.val_pairs = None
        self.val_webcam_pairs = None
        self.writer = None
        if self.main:
            self.output.mkdir(parents=True, exist_ok=True)
            with open(self.output / "config.yaml", "w") as f:
                import yaml

                yaml.safe_dump(conf, f, sort_keys=False)

    def _init_from(self, path) -> None:
        """``train.init_weights``: one of our exported weights files of this architecture, or — for a
        model with ``load_pretrained(state_dict)`` (the CAPS backbone: torchvision's ImageNet ResNet-50
        file, as the paper starts) — a foreign state dict it maps onto its own layers."""
        from hndesc_features import weights as registry
        from hndesc_features.models.checkpoints import FORMAT, load_weights, safe_load

        try:
            p = registry.resolve(path, what="train.init_weights")
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
        obj = safe_load(p, "train.init_weights")
        if obj.get("format") != FORMAT and hasattr(self.model, "load_pretrained"):
            n = self.model.load_pretrained(obj, str(p))
            logger.info("initialised %d tensors from %s", n, p)
            return
        _, obj = load_weights(p, self.arch, obj=obj)
        check_state_dict(self.model, obj["state_dict"], f"train.init_weights '{p}'")
        self.model.load_state_dict(obj["state_dict"])
        logger.info("initialised from %s", p)

    # ---------------------------------------------------------------- logging
    def _tb(self):
        if self.writer is None and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output / "tb"), purge_step=self.step + 1)
            except Exception as e:  # noqa: BLE001 - tensorboard is optional
                logger.warning("TensorBoard disabled: %s", e)
                self.writer = False
        return self.writer or None

    def log(self, split: str, step: int, values: dict) -> None:
        if not self.main:
            return
        rec = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        w = self._tb()
        if w is not None:
            for k, v in values.items():
                w.add_scalar(f"{split}/{k}", float(v), step)

    def _truncate_metrics(self) -> None:
        """On resume, drop records logged after the checkpoint's step (they will be redone)."""
        p = self.output / "metrics.jsonl"
        if not self.main or not p.exists():
            return
        keep = [ln for ln in p.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
        p.write_text("".join(ln + "\n" for ln in keep))

    # ---------------------------------------------------------------- validation
    def precise_bn(self) -> int:
        """``train.precise_bn`` > 0: BN statistics from that many fixed training batches (same batches
        every time, the same on every rank, drawn with their own seed so the training stream and
        exact resume are untouched; the loss runs on a copy, RNG states restored)."""
        n = int(self.tc.get("precise_bn") or 0)
        if n <= 0 or not batchnorm_layers(self.model):
            return 0
        if self._pbn_batches is None:
            sampler = StepBatchSampler(len(self.dataset), int(self.tc["batch_size"]),
                                       int(self.tc["seed"]) + 1_000_003)
            self._pbn_batches = [self._collate([self._prepared[k] for k in sampler.batch(s)]) for s in range(n)]
        import copy

        rng = get_rng_state()
        loss_fn = copy.deepcopy(self.loss_fn)
        try:
            return precise_batchnorm(self.model, lambda m, b: loss_fn(m, to_device(b, self.device)),
                                     self._pbn_batches)
        finally:
            set_rng_state(rng)

    def validate(self) -> Optional[dict]:
        from .validation import DEFAULT_CONF as VAL_DEFAULT
        from .validation import evaluate_pairs, make_pairs

        vc = merge(VAL_DEFAULT, self.val_conf, "val")
        # the model's own inference, exactly what the hloc extractor runs
        net = self.model.module if hasattr(self.model, "module") else self.model
        if not vc["enable"] or not hasattr(net, "extract"):
            return None
        if self.val_pairs is None:
            self.val_pairs = make_pairs(vc)
            if vc["webcam"].get("enable"):
                from .validation import make_webcam_pairs

                self.val_webcam_pairs = make_webcam_pairs(vc)
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            def ex(im):
                return net.extract(im.to(self.device), vc["max_keypoints"])

            res = evaluate_pairs(ex, self.val_pairs, vc["thresholds"])
            if vc["webcam"].get("enable"):
                res.update({"webcam_" + k: v for k, v in
                            evaluate_pairs(ex, self.val_webcam_pairs, vc["thresholds"]).items()})
        self.model.train()
        if vc["select"] != "mma@3" or vc["select_mode"] != "mean":
            from .validation import selection_value

            res["select"] = selection_value(res, vc["select"], vc["select_mode"])
        return res

    def _track_best(self, res: dict) -> None:
        """Remember the best validation (MMA@3) and keep its weights as <name>_best.pt."""
        key = "select" if "select" in res else "mma@3" if "mma@3" in res else sorted(res)[0]
        if self.best is None or res[key] > self.best["value"]:
            self.best = {"step": self.step, "metric": key, "value": res[key]}
            self.export(self.output / f"{self.conf['name']}_best.pt")

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        rngs = D.gather_objects(get_rng_state())
        if self.main:
            atomic_save({
                "format": CKPT_FORMAT, "arch": self.arch, "config": self.conf, "step": self.step,
                "model": self.model.state_dict(), "loss": self.loss_fn.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "rng": rngs, "elapsed": self.elapsed, "best": self.best, "world_size": self.world,
            }, self.output / CKPT_NAME)
        D.barrier()

    def export(self, path=None) -> Path:
        path = Path(path) if path else self.output / f"{self.conf['name']}.pt"
        meta = {"name": self.conf["name"], "step": self.step, "train_seconds": round(self.elapsed, 1),
                "config": json.dumps(self.conf, sort_keys=True)}
        if getattr(self, "command", None):
            meta["command"] = self.command
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}  # channels_last → plain
        return export_weights(path, self.arch, getattr(self.model, "conf", _strip(self.conf["model"])), state, meta)

    # ---------------------------------------------------------------- loop
    def train(self) -> dict:
        tc = self.tc
        stop_after = tc["stop_after"]
        if self.step > 0:
            self._truncate_metrics()
        it = iter(self.loader)
        t_start = time.time() - self.elapsed
        pbar = tqdm(total=self.total, initial=self.step, disable=not self.main, desc=self.conf["name"],
                    dynamic_ncols=True)
        self.model.train()
        last_logs = {}
        if tc["val_at_start"] and self.step == 0 and int(tc["val_every"]) > 0:
            self.precise_bn()
            res = self.validate() if self.main else None
            if res is not None:
                self.log("val", 0, res)
                self._track_best(res)
                tqdm.write("[val step 0] " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))
            D.barrier()
        t_log, step_log = time.time(), self.step
        while self.step < self.total:
            batch = to_device(next(it), self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                loss, logs = self.loss_fn(self.ddp_model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {loss.item()}")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if tc["grad_clip"]:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(tc["grad_clip"]))
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            self.step += 1
            self.elapsed = time.time() - t_start
            if self.step % int(tc["log_every"]) == 0 or self.step == self.total:
                vals = {"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}
                vals = D.mean_across(vals)
                vals["lr"] = self.opt.param_groups[0]["lr"]
                vals["time"] = self.elapsed
                now = time.time()  # throughput since the last log (global batch: 2 views per pair)
                vals["steps_per_s"] = (self.step - step_log) / max(now - t_log, 1e-9)
                vals["images_per_s"] = vals["steps_per_s"] * 2 * int(tc["batch_size"])
                t_log, step_log = now, self.step
                self.log("train", self.step, vals)
                last_logs = vals
                pbar.set_postfix(loss=f"{vals['loss']:.4f}")
            validating = int(tc["val_every"]) > 0 and (self.step % int(tc["val_every"]) == 0
                                                       or self.step == self.total)
            if validating or (self.step == self.total and tc["export"] == "last"):
                self.precise_bn()  # every rank: the same batches, the same statistics
            if validating:
                res = self.validate() if self.main else None
                if res is not None:
                    self.log("val", self.step, res)
                    self._track_best(res)
                    tqdm.write(f"[val step {self.step}] " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))
                D.barrier()
            pbar.update(1)
            stopping = stop_after is not None and self.step >= int(stop_after) and self.step < self.total
            if self.step % int(tc["checkpoint_every"]) == 0 or self.step == self.total or stopping:
                self.save_checkpoint()
            if stopping:
                break
        pbar.close()
        summary = {"step": self.step, "finished": self.step >= self.total, "world_size": self.world,
                   "train_seconds": round(self.elapsed, 1), "best": self.best, "last": last_logs}
        sums = D.gather_objects(float(sum(p.detach().double().sum() for p in self.model.parameters())))
        summary["param_checksums"] = sums
        if self.main:
            if summary["finished"]:
                best = self.output / f"{self.conf['name']}_best.pt"
                if tc["export"] == "best" and best.exists():
                    import shutil

                    shutil.copyfile(best, self.output / f"{self.conf['name']}.pt")
                    summary["export"] = f"{self.output / (self.conf['name'] + '.pt')} (best: {self.best})"
                else:
                    summary["export"] = str(self.export())
            (self.output / "summary.json").write_text(json.dumps(summary, indent=1))
            if tc["plot"]:
                try:
                    from .plot import plot_run

                    plot_run(self.output)
                except Exception as e:  # noqa: BLE001 - plots are a convenience
                    logger.warning("could not plot curves: %s", e)
            if self.writer:
                self.writer.close()
        D.barrier()
        return summary


def cpus_available() -> int:
    """Cores this process may run on (its affinity mask; the machine's count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def num_workers_for(requested, local_world: int = 1, cpus: Optional[int] = None) -> int:
    """DataLoader workers of one process: ``"auto"`` = its share of the cores minus one (the training
    loop), at most 16; an int is capped at that share — never more workers than cores."""
    share = max(1, (cpus or cpus_available()) // max(1, int(local_world)))
    if requested in (None, "auto"):
        return max(0, min(16, share - 1))
    n = int(requested)
    if n < 0:
        raise ValueError(f"train.num_workers must be >= 0 or 'auto', got {requested}")
    if n > share:
        logger.warning("train.num_workers=%d but this process has %d core(s): using %d workers", n, share, share)
        return share
    return n


def amp_dtype(mode, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full precision)."""
    if mode in (None, False, "false", "off", "none"):
        return None
    if mode in ("auto", True):
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            logger.warning("train.amp=fp16 needs a CUDA device: training in full precision on %s", device)
            return None
        return torch.float16
    raise ValueError(f"train.amp must be false, auto, bf16 or fp16, got {mode!r}")


def limit_threads(n: int) -> None:
    """torch, OpenCV and the BLAS of numpy to n threads (oversubscribed BLAS threads spin)."""
    torch.set_num_threads(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except Exception:  # noqa: BLE001
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except Exception:  # noqa: BLE001 - optional
        pass


def _worker_init(worker_id: int) -> None:
    limit_threads(1)


def run(conf: dict, output, resume: bool = False, overwrite: bool = False, command: Optional[str] = None) -> dict:
    """command: the command line that started the run, recorded in the exported weights' metadata."""
    trainer = Trainer(conf, output, resume=resume, overwrite=overwrite)
    trainer.command = command
    return trainer.train()
