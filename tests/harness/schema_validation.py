"""Custom resources checked against their CRD's ``openAPIV3Schema`` the way kube-apiserver does it.

A real cluster refuses a FineTuneJob whose ``spec.training.epochs`` is ``"many"`` before the operator ever sees it,
and silently drops a misspelt ``learningrate``. Tests of the operator and of ``kubectl apply`` must meet the same
server, so the emulated API server runs every write of a custom resource through ``CustomResourceSchema``:

1. **pruning**: fields the schema does not declare are removed (kept under ``x-kubernetes-preserve-unknown-fields``
   and in ``additionalProperties`` maps); the ``fieldValidation`` query parameter decides what the client hears:
   ``Strict`` → 400 ``strict decoding error: unknown field "spec.x"``, ``Warn`` (the default since Kubernetes 1.23)
   → a ``Warning: 299`` header per field, ``Ignore`` → nothing;
2. **structural checks**: type, ``nullable``, ``enum``, ``pattern``, ``minimum``/``maximum`` (with OpenAPI 3.0's
   boolean ``exclusiveMinimum``/``exclusiveMaximum``), ``multipleOf``, ``minLength``/``maxLength``,
   ``minItems``/``maxItems``, ``required``, ``properties``/``additionalProperties``/``items``,
   ``x-kubernetes-int-or-string``;
3. **CEL**: every ``x-kubernetes-validations`` rule with ``self`` bound to its node (``oldSelf`` on updates; a rule
   that uses ``oldSelf`` is a transition rule, skipped on create), with ``message``, ``messageExpression``,
   ``fieldPath`` and ``reason``. As in kube-apiserver, no rule runs when a type or required-field error was
   found. CEL is cel-python (``celpy``): pure Python, and ``type(self) == int`` works.

Failures are one 422 ``Invalid`` ``Status`` whose causes and message use kube-apiserver's ``field.Error`` wording,
e.g. ``FineTuneJob.kubetune.io "x" is invalid: spec.training.epochs: Invalid value: "string": epochs must be ...``.
Not emulated: defaulting (``default`` is not applied), formats, ``uniqueItems``, list types
(``x-kubernetes-list-type``), ``oneOf``/``allOf``/``not``, embedded resources, CEL cost limits and ratcheting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import celpy
import kmock
from celpy import celtypes

_MISSING: Any = object()  # "no such node" (a key absent from its object), unlike a JSON null

# The root keys that belong to the API machinery, not to the CRD's schema: never pruned or checked here.
_ENVELOPE = ("apiVersion", "kind", "metadata")

# x-kubernetes-validations[].reason → the cause type and the words field.Error puts before the message.
_RULE_REASONS = {
    "FieldValueInvalid": "Invalid value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
}


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: ``reason`` is its cause type, ``body`` what follows ``"<field>: "`` in the message."""

    reason: str
    field: str
    body: str

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.body, "field": self.field}


def json_type(value: Any) -> str:
    """The JSON type name kube-apiserver reports for a value (``"integer"`` for 3 and 3.0)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _quoted(value: Any) -> str:
    """A bad value as field.Error prints it: strings quoted, numbers and booleans bare."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _invalid(path: str, value: Any, detail: str, reason: str = "FieldValueInvalid") -> FieldError:
    return FieldError(reason, path, f"Invalid value: {_quoted(value)}: {detail}")


def _type_invalid(path: str, value: Any, expected: str) -> FieldError:
    actual = json_type(value)
    return _invalid(path, actual, f'{path} in body must be of type {expected}: "{actual}"', "FieldValueTypeInvalid")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class CustomResourceSchema:
    """The ``openAPIV3Schema`` of one served version of a CRD, ready to prune and validate objects of it."""

    def __init__(self, group: str, version: str, kind: str, schema: Mapping[str, Any]) -> None:
        self.group, self.version, self.kind = group, version, kind
        self.schema = schema
        self._cel = celpy.Environment()
        self._programs: dict[str, celpy.Runner] = {}
        self._has_rules = "x-kubernetes-validations" in json.dumps(schema)

    # ------------------------------------------------------------------ the entry point

    def admit(
        self,
        obj: dict[str, Any],
        old: Mapping[str, Any] | None,
        field_validation: str | None,
        warnings: list[str] | None,
    ) -> tuple[dict[str, Any], list[FieldError]]:
        """Prune ``obj`` (a new copy is returned) and validate it; ``old`` is the stored object on an update.

        Unknown fields are handled per ``field_validation``: ``Strict`` raises 400, ``Warn`` (or absent) appends
        ``unknown field "..."`` to ``warnings``. Validation errors are returned, for the caller to report together
        with its own (metadata) errors in one 422.
        """
        unknown: list[str] = []
        pruned = self.prune(obj, unknown)
        unknown.sort()
        directive = field_validation or "Warn"
        if unknown and directive == "Strict":
            causes = ", ".join(f'unknown field "{path}"' for path in unknown)
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message=f'{self.kind} in version "{self.version}" cannot be handled as a {self.kind}: '
                f"strict decoding error: {causes}",
            )
        if unknown and directive == "Warn" and warnings is not None:
            warnings.extend(f'unknown field "{path}"' for path in unknown)
        return pruned, self.validate(pruned, old)

    # ------------------------------------------------------------------ pruning

    def prune(self, obj: Mapping[str, Any], unknown: list[str]) -> dict[str, Any]:
        """``obj`` without the fields the schema does not declare (their paths go to ``unknown``).

        New containers down to the pruned fields; the rest is shared with ``obj``, which is left as it was.
        """
        body = {key: value for key, value in obj.items() if key not in _ENVELOPE}
        pruned = self._prune(body, self.schema, "", unknown)
        return {**{key: obj[key] for key in _ENVELOPE if key in obj}, **pruned}

    def _prune(self, value: Any, schema: Mapping[str, Any], path: str, unknown: list[str]) -> Any:
        if isinstance(value, list):
            items = schema.get("items")
            if not isinstance(items, Mapping):
                return value
            return [self._prune(item, items, f"{path}[{i}]", unknown) for i, item in enumerate(value)]
        if not isinstance(value, Mapping):
            return value
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True or additional is True
        result: dict[str, Any] = {}
        for key, item in value.items():
            if key in properties:
                result[key] = self._prune(item, properties[key], _child(path, key), unknown)
            elif isinstance(additional, Mapping):
                result[key] = self._prune(item, additional, _child(path, key), unknown)
            elif preserve:
                result[key] = item
            else:
                unknown.append(_child(path, key))
        return result

    # ------------------------------------------------------------------ structural validation, then CEL

    def validate(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[FieldError]:
        errors: list[FieldError] = []
        rules: list[tuple[Any, Mapping[str, Any], str, Any]] = []
        body = {key: value for key, value in obj.items() if key not in _ENVELOPE}
        old_body = _MISSING if old is None else {k: v for k, v in old.items() if k not in _ENVELOPE}
        self._check(body, self.schema, "", old_body, errors, rules)
        blocking = any(e.reason in ("FieldValueTypeInvalid", "FieldValueRequired") for e in errors)
        if blocking and self._has_rules:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    "<nil>",
                    'Invalid value: "null": some validation rules were not checked because the object was '
                    "invalid; correct the existing errors to complete validation",
                )
            )
        elif rules:
            for value, schema, path, old_value in rules:
                errors.extend(self._run_rules(value, schema, path, old_value))
        return errors

    def _check(
        self,
        value: Any,
        schema: Mapping[str, Any],
        path: str,
        old: Any,
        errors: list[FieldError],
        rules: list[tuple[Any, Mapping[str, Any], str, Any]],
    ) -> None:
        if value is None:
            if not schema.get("nullable") and (schema.get("type") or schema.get("x-kubernetes-int-or-string")):
                expected = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema["type"]
                errors.append(_type_invalid(path, value, expected))
            return
        if not self._type_ok(value, schema, path, errors):
            return
        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(_quoted(v) for v in schema["enum"])
            body = f"Unsupported value: {_quoted(value)}: supported values: {supported}"
            errors.append(FieldError("FieldValueNotSupported", path, body))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_number(value, schema, path, errors)
        elif isinstance(value, str):
            self._check_string(value, schema, path, errors)
        elif isinstance(value, list):
            self._check_array(value, schema, path, errors, rules)
        elif isinstance(value, Mapping):
            self._check_object(value, schema, path, old, errors, rules)
        if schema.get("x-kubernetes-validations"):
            rules.append((value, schema, path, old))

    @staticmethod
    def _type_ok(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> bool:
        actual = json_type(value)
        if schema.get("x-kubernetes-int-or-string"):
            expected = "integer,string"
            ok = actual in ("integer", "string")
        else:
            expected = schema.get("type", "")
            ok = not expected or actual == expected or (expected == "number" and actual == "integer")
        if not ok:
            errors.append(_type_invalid(path, value, expected))
        return ok

    @staticmethod
    def _check_number(value: float, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
        if "minimum" in schema:
            low = schema["minimum"]
            if schema.get("exclusiveMinimum") is True and value <= low:
                errors.append(_invalid(path, value, f"{path} in body should be greater than {_number(low)}"))
            elif value < low:
                errors.append(
                    _invalid(path, value, f"{path} in body should be greater than or equal to {_number(low)}")
                )
        if "maximum" in schema:
            high = schema["maximum"]
            if schema.get("exclusiveMaximum") is True and value >= high:
                errors.append(_invalid(path, value, f"{path} in body should be less than {_number(high)}"))
            elif value > high:
                errors.append(_invalid(path, value, f"{path} in body should be less than or equal to {_number(high)}"))
        step = schema.get("multipleOf")
        if step and not math.isclose(value / step, round(value / step), abs_tol=1e-9):
            errors.append(_invalid(path, value, f"{path} in body should be a multiple of {_number(step)}"))

    @staticmethod
    def _check_string(value: str, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(
                FieldError("FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes")
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(_invalid(path, value, f"{path} in body should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(_invalid(path, value, f"{path} in body should match '{schema['pattern']}'"))

    def _check_array(
        self,
        value: list[Any],
        schema: Mapping[str, Any],
        path: str,
        errors: list[FieldError],
        rules: list[tuple[Any, Mapping[str, Any], str, Any]],
    ) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(
                FieldError(
                    "FieldValueTooMany", path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"
                )
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(_invalid(path, len(value), f"{path} in body should have at least {schema['minItems']} items"))
        items = schema.get("items")
        if isinstance(items, Mapping):
            for i, item in enumerate(value):
                self._check(item, items, f"{path}[{i}]", _MISSING, errors, rules)

    def _check_object(
        self,
        value: Mapping[str, Any],
        schema: Mapping[str, Any],
        path: str,
        old: Any,
        errors: list[FieldError],
        rules: list[tuple[Any, Mapping[str, Any], str, Any]],
    ) -> None:
        for name in schema.get("required") or []:
            if name not in value:
                errors.append(FieldError("FieldValueRequired", _child(path, name), "Required value"))
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, additional if isinstance(additional, Mapping) else None)
            if sub is not None:
                old_item = old.get(key, _MISSING) if isinstance(old, Mapping) else _MISSING
                self._check(item, sub, _child(path, key), old_item, errors, rules)

    # ------------------------------------------------------------------ CEL (x-kubernetes-validations)

    def _run_rules(self, value: Any, schema: Mapping[str, Any], path: str, old: Any) -> list[FieldError]:
        errors: list[FieldError] = []
        activation = {"self": celpy.json_to_cel(value)}
        for rule in schema["x-kubernetes-validations"]:
            expression = rule["rule"]
            if "oldSelf" in expression:
                if old is _MISSING:
                    continue  # a transition rule: only checked on updates that had the value before
                activation["oldSelf"] = celpy.json_to_cel(old)
            where = path
            if rule.get("fieldPath"):
                where = path + ("" if rule["fieldPath"].startswith("[") else ".") + rule["fieldPath"].lstrip(".")
            try:
                result = self._program(expression).evaluate(activation)
            except (celpy.CELEvalError, celpy.CELParseError) as e:
                errors.append(_invalid(where, json_type(value), f"failed rule: {expression.strip()}: {e.args[0]}"))
                continue
            if isinstance(result, celtypes.BoolType) and bool(result):
                continue
            message = rule.get("message") or f"failed rule: {expression.strip()}"
            if rule.get("messageExpression"):
                try:
                    computed = self._program(rule["messageExpression"]).evaluate(activation)
                    if isinstance(computed, str) and computed.strip():
                        message = str(computed)
                except (celpy.CELEvalError, celpy.CELParseError):
                    pass  # kube-apiserver falls back to the static message too
            reason = rule.get("reason") or "FieldValueInvalid"
            words = _RULE_REASONS.get(reason, "Invalid value")
            if reason == "FieldValueInvalid":
                errors.append(_invalid(where, json_type(value), message))
            elif reason == "FieldValueDuplicate":
                errors.append(FieldError(reason, where, f"{words}: {_quoted(json_type(value))}: {message}"))
            else:
                errors.append(FieldError(reason, where, f"{words}: {message}"))
        return errors

    def _program(self, expression: str) -> celpy.Runner:
        if expression not in self._programs:
            self._programs[expression] = self._cel.program(self._cel.compile(expression))
        return self._programs[expression]


def invalid_error(kind: str, group: str, name: str, errors: list[FieldError]) -> kmock.KubernetesError:
    """The 422 ``Invalid`` Status of kube-apiserver's ``errors.NewInvalid``: one message, one cause per error."""
    qualified = f"{kind}.{group}" if group else kind
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    return kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{qualified} "{name}" is invalid: {listed}',
        details={"name": name, "group": group, "kind": kind, "causes": [e.cause() for e in errors]},
    )


def warning_header(warnings: list[str]) -> str:
    """RFC 7234 ``Warning`` values as kube-apiserver sends them (code 299, agent ``-``), comma-separated."""
    return ", ".join("299 - " + json.dumps(text) for text in warnings)
