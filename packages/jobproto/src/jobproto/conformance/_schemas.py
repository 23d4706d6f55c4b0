"""Property checks of operations from their published JSON Schemas: schema = validation.

A service publishes, in ``/openapi.json``, the JSON Schema of every operation's create request,
and promises to validate requests strictly against it (docs/protocol.md §2.2). These helpers
check that promise from outside, with nothing but the schema:

* ``operation_schemas(openapi)``: each operation's request schema from an ``/openapi.json``.
* ``judge(schema, body)``: whether the schema accepts ``body``. The judge is the ``jsonschema``
  library (Draft 2020-12, which OpenAPI 3.1 uses), independent of jobproto's own checks, with
  two corrections: ``pattern`` is an ECMA-262 regular expression (JSON Schema validation
  §6.3.3), in which ``$`` is the end of the string, while Python's ``re`` also lets it match
  before a final newline (``^a$`` finds ``"a\\n"``), so patterns are translated before they are
  searched, by the service's own translation (``jobproto._ecma``: one reading of a pattern);
  and an ``integer`` is a number written without a fraction or exponent (jobproto/1
  §2.2: ``2.0`` is not one, though JSON Schema alone would count it).
* ``cases(schema)``: a Hypothesis strategy of ``Case``: bodies drawn from the schema
  (``hypothesis_jsonschema``) and near-valid ones with ONE top-level field made wrong (missing,
  extra, wrong type, just past a bound, too long or short, not in the enum, against the pattern,
  one item or property of it wrong). Whether a case is valid is always what ``judge`` says, never
  what the mutation meant to do.
* ``check_answer(case, status, body)``: raises ``AssertionError`` unless the service's answer
  agrees: a body the schema accepts is not refused; one it refuses gets a 422
  ``validation_error`` whose ``field`` is the field made wrong (or a path under it).

Used by the repository's tests against ``Operations.parse`` of every tier and by
``python -m jobproto.conformance --own-operations`` against a live service.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from .._ecma import ecma_regex
from .._extras import missing_extra

try:
    import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev group
    from hypothesis import strategies as st
    from hypothesis_jsonschema import from_schema
except ModuleNotFoundError as exc:  # pragma: no cover - exercised with the extra missing
    raise missing_extra(exc, "conformance", "jobproto.conformance") from exc

__all__ = ["Case", "cases", "check_answer", "judge", "operation_schemas"]


@attrs.frozen
class Case:
    """One create request and what the published schema says of it."""

    #: a whole create request, ``operation`` included
    body: dict[str, Any]
    #: whether the published schema accepts ``body`` (``judge``)
    valid: bool
    #: when invalid: the one top-level field that makes it so (missing, extra, or a bad value)
    field: str | None
    #: when a rule across fields (an ``anyOf``/``oneOf``/``allOf`` of the request) refuses the
    #: change of ``field``: the other fields that rule names, which the refusal may name instead
    others: tuple[str, ...] = ()


# -- operation_schemas -----------------------------------------------------------------------------

_REF_PREFIX = "#/components/schemas/"


def operation_schemas(openapi: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Operation name -> its create request schema, from a jobproto ``/openapi.json``.

    The operations are those of the create endpoint's discriminator mapping (every path's
    ``post`` whose body has one); ``$ref``s to ``#/components/schemas/...`` are inlined, so each
    schema stands alone.
    """
    components: Mapping[str, Any] = openapi.get("components", {}).get("schemas", {})
    out: dict[str, dict[str, Any]] = {}
    for path in openapi.get("paths", {}).values():
        post = path.get("post") if isinstance(path, Mapping) else None
        if not isinstance(post, Mapping):
            continue
        content = post.get("requestBody", {}).get("content", {})
        body_schema = content.get("application/json", {}).get("schema", {})
        mapping = body_schema.get("discriminator", {}).get("mapping", {})
        for name, ref in mapping.items():
            out[name] = _inline({"$ref": ref}, components, ())
    return out


def _inline(schema: Any, components: Mapping[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(schema, list):
        return [_inline(s, components, seen) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith(_REF_PREFIX) or ref[len(_REF_PREFIX) :] not in components:
            raise ValueError(f"cannot resolve {ref!r} in the OpenAPI document")
        if ref in seen:
            raise ValueError(f"recursive schema {ref!r}: not supported")
        target = _inline(components[ref[len(_REF_PREFIX) :]], components, (*seen, ref))
        rest = {k: _inline(v, components, seen) for k, v in schema.items() if k != "$ref"}
        return {**target, **rest}
    return {k: _inline(v, components, seen) for k, v in schema.items()}


# -- judge: jsonschema, with ECMA-262 patterns -----------------------------------------------------

# The one ECMA-262 translation (``jobproto._ecma``), the service's own: a translation of the
# judge's own would make two readings of one pattern disagree (\c, \k<name>, [], [^] did).
# jsonschema still judges every other keyword independently of jobproto's checker.


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _is_integer(_: Any, instance: Any) -> bool:
    # jobproto/1 §2.2: an integer is a JSON number written without a fraction or exponent, which
    # json.loads alone makes an int; JSON Schema would also count 2.0 (the schema cannot say this)
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {"pattern": _pattern},
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@functools.lru_cache(maxsize=1024)
def _validator_of(key: str) -> Any:
    return _Validator(json.loads(key))


def _validator(schema: Mapping[str, Any]) -> Any:
    """One validator per distinct schema (building one costs more than using it)."""
    return _validator_of(json.dumps(schema, sort_keys=True))


def judge(schema: Mapping[str, Any], body: Any) -> bool:
    """Whether ``schema`` (JSON Schema Draft 2020-12) accepts ``body``."""
    return bool(_validator(schema).is_valid(body))


def _named(rule: Any) -> set[str]:
    """The fields a rule across fields names (its required and properties, at any depth)."""
    if isinstance(rule, list):
        return set().union(*(_named(r) for r in rule)) if rule else set()
    if not isinstance(rule, Mapping):
        return set()
    names = {*rule.get("required", []), *rule.get("properties", {})}
    for key in ("anyOf", "oneOf", "allOf", "not"):
        names |= _named(rule.get(key, []))
    return names


def _rule_fields(schema: Mapping[str, Any], body: Any) -> set[str]:
    """The fields named by the rules across fields that refuse ``body``."""
    found: set[str] = set()
    for error in _validator(schema).iter_errors(body):
        if not error.path and error.validator in ("anyOf", "oneOf", "allOf", "not"):
            found |= _named(error.validator_value)
    return found


def _culprits(schema: Mapping[str, Any], body: Any) -> set[str | None]:
    """The top-level fields of ``body`` that the schema refuses (None: the body as a whole)."""
    found: set[str | None] = set()
    for error in _validator(schema).iter_errors(body):
        if error.path:
            found.add(str(error.path[0]))
        elif not isinstance(body, Mapping):
            found.add(None)
        elif error.validator == "required":
            found.update(r for r in error.validator_value if r not in body)
        elif error.validator == "additionalProperties":
            props = schema.get("properties", {})
            found.update(k for k in body if k not in props)
        else:
            found.add(None)
    return found


def _classify(
    schema: Mapping[str, Any], body: dict[str, Any], touched: str | None = None
) -> Case | None:
    """``body`` as a ``Case``; ``touched``: the one field a mutation changed in a body the
    schema accepted, which is what a refusal by a rule across fields is put down to."""
    culprits = _culprits(schema, body)
    others: tuple[str, ...] = ()
    if None in culprits and touched is not None and isinstance(body, Mapping):
        culprits = (culprits - {None}) | {touched}
        others = tuple(sorted(_rule_fields(schema, body) - {touched}))
    if not culprits:
        return Case(body, True, None)
    if len(culprits) == 1 and None not in culprits:
        return Case(body, False, culprits.pop(), others)
    return None  # wrong in more than one place: no single field to expect


# -- values a schema accepts ---------------------------------------------------------------------

#: any JSON value (a field typed ``Any`` publishes ``{}``)
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_ANNOTATIONS = {"title", "description", "default", "examples", "deprecated", "format"}


def _values(schema: Any) -> st.SearchStrategy[Any]:
    """Values ``schema`` accepts (most of them: ``judge`` has the last word).

    Objects and arrays are built here, leaves come from ``hypothesis_jsonschema.from_schema``:
    its object strategy drives Hypothesis internals (``many.more()``) that current Hypothesis
    no longer has.
    """
    if schema is True or not isinstance(schema, Mapping):
        return _JSON
    keys = set(schema) - _ANNOTATIONS
    if not keys:
        return _JSON
    for key in ("anyOf", "oneOf"):
        if keys == {key}:
            return st.one_of([_values(b) for b in schema[key]])
    kind = schema.get("type")
    if kind is None and "properties" in schema:
        return _objects(schema)
    if "allOf" in keys and kind != "object":
        # values of each part that all parts accept (a field's schema and a rule's part of it)
        parts = [*schema["allOf"], {k: v for k, v in schema.items() if k != "allOf"}]
        return st.one_of([_values(p) for p in parts]).filter(lambda v: judge(schema, v))
    if isinstance(kind, list) or (kind is None and "enum" not in keys and "const" not in keys):
        # one type at a time: leaves go to from_schema, which must never build an object
        kinds = kind if isinstance(kind, list) else _TYPES
        return st.one_of([_values({**schema, "type": k}) for k in kinds])
    if kind == "object" or "properties" in schema:
        return _objects(schema)
    if kind == "array":
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 4), low + 4)
        unique = bool(schema.get("uniqueItems"))
        items = _values(schema.get("items", {}))
        return st.lists(items, min_size=low, max_size=high, unique_by=repr if unique else None)
    return _leaves(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=1024)
def _leaves(key: str) -> st.SearchStrategy[Any]:
    return from_schema(json.loads(key))  # built once per schema: from_schema resolves it anew


@st.composite
def _objects(draw: st.DrawFn, schema: Mapping[str, Any]) -> dict[str, Any]:
    # A rule across fields (allOf, or one branch of anyOf/oneOf, of required and properties)
    # joins in: its required fields are drawn, its property schemas apply beside the field's.
    rules: list[Mapping[str, Any]] = [r for r in schema.get("allOf", []) if isinstance(r, Mapping)]
    left_out: set[str] = set()
    for combination in ("anyOf", "oneOf"):
        branches = [b for b in schema.get(combination, []) if isinstance(b, Mapping)]
        if branches:
            chosen = draw(st.sampled_from(branches))
            rules.append(chosen)
            if combination == "oneOf":  # "exactly one of": what the others require stays out
                for other in branches:
                    if other is not chosen:
                        left_out.update(other.get("required", []))
                left_out -= set(chosen.get("required", []))
    props: dict[str, Any] = dict(schema.get("properties", {}))
    required = set(schema.get("required", []))
    names_rules = [schema["propertyNames"]] if "propertyNames" in schema else []
    for rule in rules:
        required.update(rule.get("required", []))
        for name, sub in rule.get("properties", {}).items():
            props[name] = {"allOf": [props[name], sub]} if name in props else sub
        if "propertyNames" in rule:
            names_rules.append(rule["propertyNames"])
    out = {
        k: draw(_values(v))
        for k, v in props.items()
        if k in required or (k not in left_out and draw(st.booleans()))
    }
    extra = schema.get("additionalProperties", {})
    if extra is not False:
        low = max(0, schema.get("minProperties", 0) - len(out))
        high = max(low, min(schema.get("maxProperties", len(out) + 3) - len(out), low + 3))
        key = (
            _values({"allOf": names_rules, "type": "string"})
            if names_rules
            else st.text(max_size=8)
        )
        more = draw(
            st.dictionaries(
                key.filter(lambda k: k not in props), _values(extra), min_size=low, max_size=high
            )
        )
        out.update(more)
    return out


# -- cases: valid bodies and near-valid mutations of one field -----------------------------------

#: one value of each JSON type (a wrong type for most fields)
_EACH_TYPE: tuple[Any, ...] = (None, True, False, 0, -1, 2.5, "", "x", [], {}, ["x"], {"x": 1})
#: strings that break the usual patterns of names, hosts, paths and ids
_ODD_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "-",
    ".",
    "..",
    "/",
    "a/b",
    "a b",
    "A",
    "\n",
    "\x00",
    "é",
    "-a",
    "a-",
    "a..b",
    "_",
    "0",
)


def _branch(schema: Mapping[str, Any], value: Any) -> Mapping[str, Any]:
    """The part of ``schema`` that speaks of ``value`` (the matching ``anyOf`` branch)."""
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for b in branches:
                if isinstance(b, Mapping) and judge(b, value):
                    return _branch(b, value)
    return schema


def _non_null_branches(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    branches = schema.get("anyOf") or schema.get("oneOf")
    if not isinstance(branches, list):
        return [schema]
    return [b for b in branches if isinstance(b, Mapping) and b.get("type") != "null"]


def _numbers(schema: Mapping[str, Any], value: float) -> list[Any]:
    integral = schema.get("type") == "integer" or isinstance(value, int)
    step = 1 if integral else 0.5
    out: list[Any] = [value + step, value - step, -value, 10**20, -(10**20), 1e300]
    if isinstance(value, int) and not isinstance(value, bool):
        out += [float(value)] * 3  # 2.0: no integer in jobproto/1 (and often sent by mistake)
        out.append(value + 0.5)
    for key in ("minimum", "exclusiveMinimum"):
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            out += [bound, bound - step, math.nextafter(bound, -math.inf)]
    for key in ("maximum", "exclusiveMaximum"):
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            out += [bound, bound + step, math.nextafter(bound, math.inf)]
    return [v for v in out if not isinstance(v, float) or math.isfinite(v)]


def _strings(schema: Mapping[str, Any], value: str) -> list[str]:
    last = value[-1:] or "a"
    out = [
        value + "\n",
        "\n" + value,
        value + " ",
        " " + value,
        value + "/",
        value.upper(),
        value + "x",
        value[:-1],
        value * 2,
    ]
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and low > 0:
        out.append(value[: low - 1])
    if isinstance(high, int):
        out.append(value + last * (high + 1 - len(value)))
        out.append("a" * (high + 1))
    return out


@st.composite
def _near(draw: st.DrawFn, schema: Mapping[str, Any], value: Any, depth: int = 0) -> Any:
    """A value close to ``value`` (valid for ``schema``) that may well not be."""
    schema = _branch(schema, value)
    options: list[st.SearchStrategy[Any]] = [st.sampled_from(_EACH_TYPE)]
    if isinstance(value, bool):
        options.append(st.sampled_from([0, 1, "true"]))
    elif isinstance(value, int | float):
        options.append(st.sampled_from(_numbers(schema, value)))
    elif isinstance(value, str):
        options.append(st.sampled_from(_strings(schema, value)))
        options.append(st.sampled_from(_ODD_STRINGS))
        options.append(st.text(max_size=12))
    elif isinstance(value, list):
        options.append(_near_list(schema, value, depth))
    elif isinstance(value, dict):
        options.append(_near_object(schema, value, depth))
    if "enum" in schema or "const" in schema:
        options.append(st.sampled_from([f"{value}x", str(value).upper(), "", 0, None]))
    # the wrong type is one option; the mistakes particular to this value, all the others
    return draw(st.one_of(options[:1] + options[1:] * 3))


@st.composite
def _near_list(draw: st.DrawFn, schema: Mapping[str, Any], value: list[Any], depth: int) -> Any:
    items = schema.get("items", {})
    items = items if isinstance(items, Mapping) else {}
    low, high = schema.get("minItems"), schema.get("maxItems")
    choices = ["append", "shorten"]
    if value and depth < 3:
        choices.append("item")
    if isinstance(high, int) and high < 2000:
        choices.append("over")
    if isinstance(low, int) and low > 0:
        choices.append("under")
    how = draw(st.sampled_from(choices))
    if how == "item":
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(_near(items, value[i], depth + 1)), *value[i + 1 :]]
    if how == "under":
        return value[: int(low) - 1]  # type: ignore[arg-type]
    if how == "shorten":
        return value[:-1]
    extra = draw(_values(items)) if items else "x"
    if how == "over":
        return value + [extra] * (int(high) + 1 - len(value))  # type: ignore[arg-type]
    return [*value, extra]


@st.composite
def _near_object(
    draw: st.DrawFn, schema: Mapping[str, Any], value: dict[str, Any], depth: int
) -> Any:
    props: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", {})
    names = schema.get("propertyNames", {})
    choices = ["extra"]
    if value and depth < 3:
        choices += ["remove", "change"]
    if props and depth < 3:
        choices.append("add")
    if isinstance(names, Mapping) and names:
        choices.append("badname")
    how = draw(st.sampled_from(choices))
    out = dict(value)
    if how == "remove":
        del out[draw(st.sampled_from(sorted(value)))]
    elif how == "change":
        key = draw(st.sampled_from(sorted(value)))
        sub = props.get(key, extra if isinstance(extra, Mapping) else {})
        out[key] = draw(_near(sub, value[key], depth + 1))
    elif how == "add":
        key = draw(st.sampled_from(sorted(props)))
        out[key] = draw(_values(props[key]))
    elif how == "badname":
        name = draw(_values({**names, "type": "string"}))
        key = draw(st.sampled_from(_strings(names, name) + list(_ODD_STRINGS)))
        out[key] = draw(_values(extra)) if isinstance(extra, Mapping) and extra else "x"
    else:
        out[draw(_extra_name(props))] = draw(st.sampled_from(_EACH_TYPE))
    return out


def _extra_name(props: Mapping[str, Any]) -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda k: k not in props)


@st.composite
def _mutated(draw: st.DrawFn, schema: Mapping[str, Any]) -> Case | None:
    # start from a body the schema accepts (a few tries; bodies it refuses are cases too)
    body: dict[str, Any] = draw(_values(schema))
    for _ in range(3):
        if judge(schema, body):
            break
        body = draw(_values(schema))
    else:
        return _classify(schema, body)
    props: Mapping[str, Any] = schema.get("properties", {})
    fields = sorted(k for k in props if k != "operation")
    how = draw(st.sampled_from(["value", "value", "value", "missing", "extra", "operation"]))
    if how == "extra" or (not fields and how == "value"):
        touched = draw(_extra_name(props))
        body[touched] = draw(st.sampled_from(_EACH_TYPE))
    elif how == "operation":
        # never another operation's name: that may be a valid request for that operation
        touched = "operation"
        if draw(st.booleans()):
            del body["operation"]
        else:
            body["operation"] = draw(st.sampled_from([None, 0, True, [], {}]))
    elif how == "missing":
        # a required field, or one a rule across fields may need
        present = sorted({*schema.get("required", []), *body} - {"operation"})
        if not present:
            return None
        touched = draw(st.sampled_from(present))
        body.pop(touched, None)
    else:
        touched = draw(st.sampled_from(fields))
        sub = props[touched]
        if touched in body:
            current = body[touched]
        else:  # an optional field left out: start from a valid value of it
            current = draw(st.one_of([_values(b) for b in _non_null_branches(sub)]))
        body[touched] = draw(_near(sub, current))
    return _classify(schema, body, touched)


def cases(schema: Mapping[str, Any]) -> st.SearchStrategy[Case]:
    """Create requests for the operation whose request schema is ``schema``, classified by
    ``judge``: about a third drawn from the schema, the rest with one field mutated."""
    valid = _values(schema).map(lambda body: _classify(schema, body))
    mutated = _mutated(schema)
    return st.one_of(valid, mutated, mutated).filter(lambda c: c is not None)  # type: ignore[return-value]


# -- check_answer ----------------------------------------------------------------------------------


def _under(field: Any, top: str) -> bool:
    return isinstance(field, str) and (
        field == top or field.startswith(f"{top}.") or field.startswith(f"{top}[")
    )


def check_answer(case: Case, status: int, body: Any) -> None:
    """Raise ``AssertionError`` unless ``status``/``body`` is the right answer to ``case``.

    Valid per the schema: not refused (a 2xx). Invalid: 422 ``validation_error`` with ``field``
    the case's field or a path under it (``messages`` covers ``messages[1].content``), or one of
    ``others`` when a rule across fields refused it.
    """
    if case.valid:
        if not 200 <= status < 300:
            raise AssertionError(
                f"the published schema accepts {case.body!r}, but it was refused: {status} {body!r}"
            )
        return
    expect = f"422 validation_error with field {case.field!r}"
    if case.others:
        expect += f" (or, by a rule across fields, one of {', '.join(case.others)})"
    if status != 422:
        raise AssertionError(
            f"the published schema refuses {case.body!r} (field {case.field!r}), but the answer"
            f" was {status} {body!r}, not {expect}"
        )
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping) or error.get("code") != "validation_error":
        raise AssertionError(f"{case.body!r}: expected {expect}, got {status} {body!r}")
    assert case.field is not None
    if not any(_under(error.get("field"), f) for f in (case.field, *case.others)):
        raise AssertionError(
            f"{case.body!r}: expected {expect} (or a path under it), got field"
            f" {error.get('field')!r}: {error.get('message')!r}"
        )
