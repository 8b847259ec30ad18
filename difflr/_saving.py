"""Saving and loading an `LRMultiplier`: its config and its saved resolution.

The config has the keys `name`, `optimizer` (the wrapped optimizer,
serialized by Keras), `multipliers` and `decay_multipliers` (the rules that
can be saved as such: strings and registered layer classes),
`keep_frozen_state` and `saved_resolution`, and `schedules` where the step
runs some (the table the saved schedule indices point into, in order). Files
saved by every earlier version load: these keys do not change.

Once the optimizer is built (or could be resolved for the model being
saved), its resolution is what counts, and it is saved beside the rules
(`SavedResolution`): rules whose keys are objects or callables cannot be
saved, and Keras gives variables new paths when a model is loaded, so path
rules could match differently. The loaded optimizer takes its values from
the table, matched to the variables by position and shape when it builds;
the saved rules rank below it (they gave those values) and every rule given
since ranks above it (`difflr._rules`). The table holds no variable paths,
which a load changes, so that a config round-trips unchanged through a
save, as a plain optimizer's does. It also says which variables had
optimizer state, so that the state of a variable paused when saved loads
(`difflr._pause.tracked_positions`).

The multiplier vectors themselves are optimizer variables, saved and loaded
by Keras with the others; the host-side values are read back from them
(`_state.Multipliers.refresh`).
"""

import keras

from difflr import _rules
from difflr import _scheduled


class SavedResolution:
    """The multipliers of a built optimizer, one entry per trainable variable.

    Attributes:
        shapes: of the variables when saved.
        multipliers, decay_multipliers: the values in force.
        has_state: whether the wrapped optimizer kept state for each.
    """

    _KEYS = ("shapes", "multipliers", "decay_multipliers", "has_state")

    def __init__(self, shapes, multipliers, decay_multipliers, has_state=None,
                 paths=None):
        # (`paths`: in files saved by difflr 0.1, unused: a load renames)
        self.shapes = [list(s) for s in shapes]
        self.multipliers = list(multipliers)
        self.decay_multipliers = list(decay_multipliers)
        # (files saved before `has_state` existed: state only where m != 0)
        self.has_state = list(has_state) if has_state is not None else None

    @classmethod
    def of(cls, variables, multipliers, decay_multipliers, tracked):
        """The resolution of `variables`: their values, and the positions
        the wrapped optimizer keeps (or will keep) state for."""
        tracked = set(tracked)
        return cls([list(v.shape) for v in variables],
                   multipliers, decay_multipliers,
                   [i in tracked for i in range(len(variables))])

    def to_config(self):
        config = {key: getattr(self, key) for key in self._KEYS
                  if getattr(self, key) is not None}
        for key in ("multipliers", "decay_multipliers"):
            config[key] = [_rules.value_config(v) for v in config[key]]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        if config is None:
            return None
        config = dict(config)
        for key in ("multipliers", "decay_multipliers"):
            config[key] = [_scheduled.from_config(v, custom_objects)
                           for v in config[key]]
        return cls(**config)

    def tables(self, variables):
        """`(multipliers, decay_multipliers)` for `variables`, which must be
        the variables saved, in order."""
        shapes = [list(v.shape) for v in variables]
        if self.shapes != shapes:
            first = next((i for i, (a, b) in enumerate(zip(self.shapes, shapes))
                          if a != b), min(len(shapes), len(self.shapes)))
            raise ValueError(
                "This LRMultiplier was saved for a model with "
                f"{len(self.shapes)} trainable variables, but it is being "
                f"built for {len(shapes)} with other shapes (the first "
                f"difference is at variable {first}: "
                + (f"'{variables[first].path}' has shape {shapes[first]}"
                   if first < len(shapes) else "there is none")
                + ", the saved one "
                + (f"{self.shapes[first]}" if first < len(self.shapes) else "none")
                + "). Load it with the model it was saved with."
            )
        return self.multipliers, self.decay_multipliers


def config(name, optimizer, rules, keep_frozen_state, resolution=None,
           unresolved=None, schedules=()):
    """The config of an `LRMultiplier`.

    Args:
        name: its name.
        optimizer: the wrapped optimizer.
        rules: its `_rules.RuleMaps` (those that can be saved as such are).
        keep_frozen_state: its flag.
        resolution: a `SavedResolution`: of the built optimizer, or the one
            it was loaded with.
        unresolved: why the rules could not be resolved for the model being
            saved, if they could not: the file is written (the model and its
            weights load), and loading the optimizer raises this reason.
        schedules: the schedules the step runs, in order (the saved
            schedule indices point into them), also those no rule gives now.
    """
    if rules is None:
        rules = _rules.RuleMaps()
    elif resolution is None and rules.needs_resolution_to_save():
        raise ValueError(
            "This LRMultiplier has rules that can only be saved once "
            "resolved (layers, variables, callables or unregistered "
            "classes), and it is not built yet. Build it first (fit the "
            "model, or call `model.optimizer.build("
            "model.trainable_variables)`), or use string rules."
        )
    multipliers, decay_multipliers = rules.to_config()
    saved = {
        "name": name,
        "optimizer": keras.saving.serialize_keras_object(optimizer),
        "multipliers": multipliers,
        "decay_multipliers": decay_multipliers,
        "keep_frozen_state": keep_frozen_state,
        "saved_resolution": None if resolution is None else resolution.to_config(),
    }
    if schedules:
        saved["schedules"] = [_scheduled.to_config(s) for s in schedules]
    if unresolved is not None:
        saved["unresolved"] = unresolved
    return saved


def from_config(config, custom_objects=None):
    """`(optimizer, arguments, resolution, schedules)` from a config: the
    wrapped optimizer, the other constructor arguments, the
    `SavedResolution` (or None) and the schedules of the step's table."""
    config = dict(config)
    if "unresolved" in config:
        raise ValueError(
            f"The LRMultiplier '{config.get('name')}' in this file could not "
            "be saved: when it was saved, its rules did not resolve for the "
            f"model ({config['unresolved']}). The model and its weights are "
            "intact: load them with `keras.models.load_model(path, "
            "compile=False)` and compile with a new `difflr.LRMultiplier`."
        )
    optimizer = _wrapped_from_config(config.pop("optimizer"), custom_objects)
    resolution = SavedResolution.from_config(config.pop("saved_resolution", None),
                                             custom_objects)
    schedules = [_scheduled.from_config(s, custom_objects)
                 for s in config.pop("schedules", [])]
    for key in ("multipliers", "decay_multipliers"):
        config[key] = _rules.from_config(config.get(key) or [], custom_objects)
    return optimizer, config, resolution, schedules


def _wrapped_from_config(config, custom_objects=None):
    """The wrapped optimizer, from its serialized form.

    One of Keras's own is rebuilt by its name, for the backend running now:
    a file saved on torch names the torch backend's class (`module` is
    `keras.src.backend.torch.optimizers...`), which Keras 3.16 would load as
    such on every backend, where it cannot run.
    """
    if isinstance(config, dict):
        name = config.get("class_name", "")
        module = config.get("module") or ""
        if module.startswith("keras.src.backend.") and getattr(
                keras.optimizers, name, None) is not None:
            config = {"class_name": name, "config": config["config"]}
    return keras.optimizers.deserialize(config, custom_objects=custom_objects)
