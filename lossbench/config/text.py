"""A config as YAML text, as ``OmegaConf.to_yaml`` writes it, through libyaml's C emitter:
OmegaConf's dumper is pure Python, and a sweep trial's three ``.hydra`` files cost it about
20 ms (the hydra node alone 15.6 ms against 1.2 ms here). Strings that would read back as
another type are quoted by OmegaConf's own rule, so the text reads back to the same values;
it is the same text except where a long double-quoted string is folded (libyaml folds it at
other places). Without libyaml, ``OmegaConf.to_yaml`` itself."""

from __future__ import annotations

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf._utils import get_omega_conf_dumper

_C = getattr(yaml, "CDumper", None)
_Dumper = None
if _C is not None:

    class _Dumper(_C):  # noqa: F811 (libyaml's emitter, OmegaConf's representers)
        pass

    _Dumper.add_representer(str, get_omega_conf_dumper().yaml_representers[str])


def to_yaml(data, resolve: bool = False) -> str:
    """``data`` (a DictConfig, a ListConfig or plain dicts and lists of YAML scalars) as
    ``OmegaConf.to_yaml`` would write it (keys in their order)."""
    if _Dumper is None:
        return OmegaConf.to_yaml(data if isinstance(data, DictConfig | ListConfig)
                                 else OmegaConf.create(data), resolve=resolve)  # fmt: skip
    if isinstance(data, DictConfig | ListConfig):
        data = OmegaConf.to_container(data, resolve=resolve, enum_to_str=True)
    return yaml.dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False,
                     Dumper=_Dumper)  # fmt: skip
