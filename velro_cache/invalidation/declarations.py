"""Declarations: which cached data depends on which model instances and fields.

In the style of the admin's ``ModelAdmin``: a class per model, with plain
attributes, registered once next to the models::

    @velro_cache.register(TeamMembership)
    class MembershipCache(velro_cache.ModelCache):
        prefixes = ["team_membership:user:{user_id}", "session:user:{user_id}"]
        tags = ["team:{team_id}"]
        fields = ["team", "user", "role"]

Each entry is a key template: parts separated by ``:``, a part either literal
or a ``{name}`` placeholder. A name is looked up like a ``list_display``
entry: a method of the declaration taking the instance, else an attribute of
the instance (``pk``, ``team_id``, or a path through relations such as
``team.owner_id``). A model instance stands for its pk; a list, set or
queryset gives one key per element, which is how a change reaches many
dependents (a team rename reaching every member's cached data); ``None`` or
an empty list gives none.

- ``prefixes``: everything cached under the prefix depends on the instance.
  Each prefix is also declared as a namespace level, so keys under it carry
  its token and retiring it is O(1).
- ``keys``: exact keys. Cached reads of them are retired like prefixes, and
  the plain key is also deleted, for values stored with ``cache.set``.
- ``tags``: namespaces that are not key prefixes; reads list the tags they
  depend on explicitly (``cached_read(key, loader, tags=[...])``).
- ``fields``: when given, a save whose ``update_fields`` touch none of them
  invalidates nothing (deletes always do).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Model  # for annotations inside Registry, whose models() method shadows the module

from ..exceptions import AlreadyRegistered, NotRegistered
from ..keys import SEPARATOR, normalize_part
from ..namespaces import Pattern, levels
from .retirement import Retirement

KEY, PREFIX, TAG = "key", "prefix", "tag"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


class Template:
    """One declared key, prefix or tag, e.g. ``generation:{pk}``."""

    def __init__(self, text: str, kind: str) -> None:
        if not isinstance(text, str) or not text:
            raise ValueError(f"a {kind} template must be a non-empty str, got {text!r}")
        self.text = text
        self.kind = kind
        parts: list[str | tuple[str]] = []
        for part in text.split(SEPARATOR):
            found = _PLACEHOLDER.fullmatch(part)
            if found:
                parts.append((found.group(1),))
            elif "{" in part or "}" in part:
                raise ValueError(f"{text!r}: a part is either literal or one whole {{name}}, not {part!r}")
            else:
                parts.append(normalize_part(part))
        if not isinstance(parts[0], str):
            raise ValueError(f"{text!r}: the first part names the data type and must be literal")
        self.parts = tuple(parts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(part[0] for part in self.parts if isinstance(part, tuple))

    @property
    def data_type(self) -> str:
        return self.parts[0]  # type: ignore[return-value]

    def pattern(self) -> Pattern:
        return Pattern([part if isinstance(part, str) else None for part in self.parts], exact=self.kind == KEY)

    def render(self, resolve: Callable[[str], list[str] | None]) -> list[str]:
        """Every key the template stands for; none when a name has no value."""
        choices: list[list[str]] = []
        for part in self.parts:
            if isinstance(part, str):
                choices.append([part])
                continue
            values = resolve(part[0])
            if not values:
                return []
            choices.append(values)
        return [SEPARATOR.join(combo) for combo in itertools.product(*choices)]

    def __repr__(self) -> str:
        return f"<{self.kind} {self.text!r}>"


def _as_parts(value: Any) -> list[str]:
    """A resolved value as key parts: instances as pks, collections expanded, None as nothing."""
    if value is None:
        return []
    if isinstance(value, models.Model):
        return [] if value.pk is None else [normalize_part(value.pk)]
    if isinstance(value, models.Manager):
        value = value.all()
    if isinstance(value, (list, tuple, set, frozenset, models.QuerySet)) or _is_generator(value):
        parts: list[str] = []
        for item in value:
            parts.extend(_as_parts(item))
        return parts
    return [normalize_part(value)]


def _is_generator(value: Any) -> bool:
    return hasattr(value, "__next__") and hasattr(value, "__iter__")


class ModelCache:
    """Subclass per model and register it; see the module docstring."""

    keys: Sequence[str] = ()
    prefixes: Sequence[str] = ()
    tags: Sequence[str] = ()
    fields: Sequence[str] | None = None

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        self.templates = (
            [Template(text, KEY) for text in self.keys]
            + [Template(text, PREFIX) for text in self.prefixes]
            + [Template(text, TAG) for text in self.tags]
        )
        self.field_names = None if self.fields is None else frozenset(self._field_name(name) for name in self.fields)
        # Plain names whose values are kept from load time, so a change of
        # them (a generation moved to another team) also retires what
        # depended on the old value, without a query.
        self.remembered = {
            name: attname for name in self._names() if (attname := self._plain_attname(name)) is not None
        }

    # -- configuration ---------------------------------------------------------------------
    def _names(self) -> set[str]:
        return {name for template in self.templates for name in template.names}

    def _field_name(self, name: str) -> str:
        try:
            return self.model._meta.get_field(name).name
        except FieldDoesNotExist:
            for candidate in self.model._meta.concrete_fields:
                if candidate.attname == name:
                    return candidate.name
            return name  # reported by the system check

    def _is_method(self, name: str) -> bool:
        return name not in _BASE_NAMES and callable(getattr(self, name, None))

    def _plain_attname(self, name: str) -> str | None:
        if self._is_method(name) or "." in name:
            return None
        if name == "pk":
            return self.model._meta.pk.attname
        for candidate in self.model._meta.concrete_fields:
            if name in (candidate.attname, candidate.name):
                return candidate.attname  # for a foreign key, its id: what the key holds anyway
        return None

    def problems(self) -> list[str]:
        """Names no instance could resolve (reported by the system checks)."""
        found = []
        for name in sorted(self._names()):
            if self._is_method(name) or name == "pk":
                continue
            head = name.split(".")[0]
            try:
                self.model._meta.get_field(head)
                continue
            except FieldDoesNotExist:
                pass
            if any(f.attname == head for f in self.model._meta.concrete_fields) or hasattr(self.model, head):
                continue
            found.append(
                f"{type(self).__name__} for {self.model._meta.label}: {{{name}}} is neither a method of the declaration"
                " nor a field or attribute of the model"
            )
        if self.fields is not None:
            for name in self.fields:
                try:
                    self.model._meta.get_field(self._field_name(name))
                except FieldDoesNotExist:
                    found.append(
                        f"{type(self).__name__} for {self.model._meta.label}: fields names {name!r}, which is not a field of the model"
                    )
        return found

    # -- what a change retires ---------------------------------------------------------------
    def is_affected(self, changed: Iterable[str] | None) -> bool:
        """Whether a save of these fields (None: unknown, i.e. all) concerns this declaration."""
        if changed is None or self.field_names is None:
            return True
        return any(self._field_name(name) in self.field_names for name in changed)

    def resolve(self, instance: models.Model, name: str) -> list[str]:
        """The key parts a placeholder stands for on this instance."""
        if self._is_method(name):
            return _as_parts(getattr(self, name)(instance))
        if name == "pk":
            return _as_parts(instance.pk)
        value: Any = instance
        for piece in name.split("."):
            value = getattr(value, piece, None)
            if value is None:
                return []
        return _as_parts(value)

    def retirement(self, instance: models.Model, remembered: dict[str, Any] | None = None) -> Retirement:
        """What a change of ``instance`` retires: for its values now and, when known, at load time."""
        result = Retirement()
        for template in self.templates:
            rendered = set(template.render(lambda name: self.resolve(instance, name)))
            if remembered:
                rendered |= set(template.render(lambda name: _remembered_parts(remembered, name)))
            result.namespaces |= rendered
            if template.kind == KEY:
                result.keys |= rendered
        return result

    def coarse_retirement(self) -> Retirement:
        """Everything any instance could have made stale: the data types of the templates."""
        return Retirement({template.data_type for template in self.templates})

    def remember(self, instance: models.Model) -> dict[str, Any]:
        values = instance.__dict__
        return {name: values[attname] for name, attname in self.remembered.items() if attname in values}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self.model._meta.label}>"


_BASE_NAMES = frozenset(dir(ModelCache))


def _remembered_parts(remembered: dict[str, Any], name: str) -> list[str] | None:
    if name not in remembered:
        return None  # not remembered: this template is rendered from current values only
    return _as_parts(remembered[name])


class Registry:
    """Every declaration, by model; declares their prefixes and keys as namespace levels."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_model: dict[type[models.Model], list[ModelCache]] = {}
        self._applicable: dict[type, tuple[ModelCache, ...]] = {}
        self._extra_levels: list[Pattern] = []
        self.on_change: list[Callable[[type[models.Model]], None]] = []

    def register(self, model: type[models.Model], declaration_class: type[ModelCache] | None = None, **attributes: Any) -> ModelCache:
        if declaration_class is None:
            declaration_class = type(f"{model.__name__}Cache", (ModelCache,), attributes)
        elif attributes:
            declaration_class = type(declaration_class.__name__, (declaration_class,), attributes)
        if not (isinstance(declaration_class, type) and issubclass(declaration_class, ModelCache)):
            raise TypeError(f"{declaration_class!r} is not a ModelCache subclass")
        if getattr(model._meta, "abstract", False):
            raise TypeError(f"{model.__name__} is abstract: register its concrete subclasses")
        with self._lock:
            current = self._by_model.setdefault(model, [])
            if any(type(existing) is declaration_class for existing in current):
                raise AlreadyRegistered(f"{declaration_class.__name__} is already registered for {model._meta.label}")
            declaration = declaration_class(model)
            current.append(declaration)
            self._changed(model)
        return declaration

    def unregister(self, model: type[models.Model], declaration_class: type[ModelCache] | None = None) -> None:
        with self._lock:
            current = self._by_model.get(model)
            if not current:
                raise NotRegistered(f"{model._meta.label} has no cache declarations")
            kept = [d for d in current if declaration_class is not None and not isinstance(d, declaration_class)]
            if len(kept) == len(current):
                raise NotRegistered(f"{declaration_class!r} is not registered for {model._meta.label}")
            if kept:
                self._by_model[model] = kept
            else:
                del self._by_model[model]
            self._changed(model)

    def declare_level(self, template: str) -> None:
        """Make a prefix a namespace level without a model behind it (e.g. for a tag-free app)."""
        with self._lock:
            self._extra_levels.append(Template(template, PREFIX).pattern())
            self._rebuild_levels()

    def models(self) -> list[type[models.Model]]:
        return list(self._by_model)

    def declarations(self) -> list[ModelCache]:
        return [d for group in self._by_model.values() for d in group]

    def declarations_for(self, model: type) -> tuple[ModelCache, ...]:
        """Declarations that apply to a model: its own and its registered ancestors' (proxies, MTI)."""
        found = self._applicable.get(model)
        if found is None:
            found = tuple(
                d for registered, group in list(self._by_model.items()) if issubclass(model, registered) for d in group
            )
            self._applicable[model] = found
        return found

    def _changed(self, model: type[Model]) -> None:
        self._applicable = {}
        self._rebuild_levels()
        for callback in self.on_change:
            callback(model)

    def _rebuild_levels(self) -> None:
        levels.reset()
        for pattern in self._extra_levels:
            levels.declare(pattern)
        for declaration in self.declarations():
            for template in declaration.templates:
                if template.kind != TAG:
                    levels.declare(template.pattern())


registry = Registry()


def register(model: Any, declaration_class: type[ModelCache] | None = None, **attributes: Any) -> Any:
    """Register a declaration, admin style.

    ``register(Model, prefixes=[...])`` or ``register(Model, MyCache)`` register
    at once; ``@register(Model)`` (or ``@register(ModelA, ModelB)``) decorates
    a ``ModelCache`` subclass.
    """
    if isinstance(declaration_class, type) and issubclass(declaration_class, models.Model):
        models_list = [model, declaration_class]
        declaration_class = None
    else:
        models_list = list(model) if isinstance(model, (list, tuple)) else [model]
    if declaration_class is None and not attributes:

        def decorate(cls: type[ModelCache]) -> type[ModelCache]:
            for each in models_list:
                registry.register(each, cls)
            return cls

        return decorate
    results = [registry.register(each, declaration_class, **attributes) for each in models_list]
    return results[0] if len(results) == 1 else results
