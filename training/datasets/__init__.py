"""Training datasets, chosen by the config's ``data.name``.

``data.name`` is a module of this package (``homographies``, ``image_folder``, ``coco``,
``megadepth``, ``phototourism``, or one added by a method, e.g. weakly-labelled image groups) or
a dotted ``package.module:Class``. The class is the one subclass of ``BaseDataset`` *defined* in
that module (or ``data.class`` when there are several). See training/README.md.
"""
from __future__ import annotations

import importlib
import inspect

from .base import BaseDataset, CorruptImageWarning, read_image  # noqa: F401


def get_dataset(name: str, class_name: str | None = None):
    if ":" in name:
        mod_name, class_name = name.split(":", 1)
        module = importlib.import_module(mod_name)
    else:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise ValueError(f"Unknown dataset '{name}': no module {__name__}.{name}") from None
    if class_name:
        return getattr(module, class_name)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if c.__module__ == module.__name__ and issubclass(c, BaseDataset)]
    if len(classes) != 1:
        raise ValueError(f"Dataset module '{module.__name__}' defines {len(classes)} datasets "
                         f"({[c.__name__ for c in classes]}): set data.class")
    return classes[0]


def build_dataset(conf: dict, split: str = "train") -> BaseDataset:
    if "name" not in conf:
        raise ValueError("data.name is missing (e.g. 'homographies')")
    cls = get_dataset(conf["name"], conf.get("class"))
    conf = {k: v for k, v in conf.items() if k not in ("name", "class")}
    return cls(conf, split)
