from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelRef(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class Canary(_message.Message):
    __slots__ = ("version", "weight")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    version: str
    weight: float
    def __init__(self, version: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Shadow(_message.Message):
    __slots__ = ("version", "fraction")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    version: str
    fraction: float
    def __init__(self, version: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class TrafficPolicy(_message.Message):
    __slots__ = ("model", "stable", "canaries", "shadows", "previous_stable", "generation")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STABLE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    stable: str
    canaries: _containers.RepeatedCompositeFieldContainer[Canary]
    shadows: _containers.RepeatedCompositeFieldContainer[Shadow]
    previous_stable: str
    generation: int
    def __init__(self, model: _Optional[str] = ..., stable: _Optional[str] = ..., canaries: _Optional[_Iterable[_Union[Canary, _Mapping]]] = ..., shadows: _Optional[_Iterable[_Union[Shadow, _Mapping]]] = ..., previous_stable: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class SetTrafficRequest(_message.Message):
    __slots__ = ("policy", "reason")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    policy: TrafficPolicy
    reason: str
    def __init__(self, policy: _Optional[_Union[TrafficPolicy, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class ChangeRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Gates(_message.Message):
    __slots__ = ("max_error_rate_increase", "max_p99_ratio", "max_disagreement", "max_drift_status", "min_requests", "max_accuracy_drop", "accuracy_alpha", "min_labelled")
    MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_DISAGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_DRIFT_STATUS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_ALPHA_FIELD_NUMBER: _ClassVar[int]
    MIN_LABELLED_FIELD_NUMBER: _ClassVar[int]
    max_error_rate_increase: float
    max_p99_ratio: float
    max_disagreement: float
    max_drift_status: str
    min_requests: int
    max_accuracy_drop: float
    accuracy_alpha: float
    min_labelled: int
    def __init__(self, max_error_rate_increase: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., max_disagreement: _Optional[float] = ..., max_drift_status: _Optional[str] = ..., min_requests: _Optional[int] = ..., max_accuracy_drop: _Optional[float] = ..., accuracy_alpha: _Optional[float] = ..., min_labelled: _Optional[int] = ...) -> None: ...

class RolloutPlan(_message.Message):
    __slots__ = ("steps", "hold_seconds", "min_requests", "gates")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    HOLD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedScalarFieldContainer[float]
    hold_seconds: float
    min_requests: int
    gates: Gates
    def __init__(self, steps: _Optional[_Iterable[float]] = ..., hold_seconds: _Optional[float] = ..., min_requests: _Optional[int] = ..., gates: _Optional[_Union[Gates, _Mapping]] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("model", "canary", "plan", "reason", "plan_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    canary: str
    plan: RolloutPlan
    reason: str
    plan_json: str
    def __init__(self, model: _Optional[str] = ..., canary: _Optional[str] = ..., plan: _Optional[_Union[RolloutPlan, _Mapping]] = ..., reason: _Optional[str] = ..., plan_json: _Optional[str] = ...) -> None: ...

class ControlRolloutRequest(_message.Message):
    __slots__ = ("model", "action", "reason")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ControlRolloutRequest.Action]
        PAUSE: _ClassVar[ControlRolloutRequest.Action]
        RESUME: _ClassVar[ControlRolloutRequest.Action]
        ABORT: _ClassVar[ControlRolloutRequest.Action]
        PROMOTE: _ClassVar[ControlRolloutRequest.Action]
        APPROVE: _ClassVar[ControlRolloutRequest.Action]
        REJECT: _ClassVar[ControlRolloutRequest.Action]
    ACTION_UNSPECIFIED: ControlRolloutRequest.Action
    PAUSE: ControlRolloutRequest.Action
    RESUME: ControlRolloutRequest.Action
    ABORT: ControlRolloutRequest.Action
    PROMOTE: ControlRolloutRequest.Action
    APPROVE: ControlRolloutRequest.Action
    REJECT: ControlRolloutRequest.Action
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    action: ControlRolloutRequest.Action
    reason: str
    def __init__(self, model: _Optional[str] = ..., action: _Optional[_Union[ControlRolloutRequest.Action, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("model", "stable", "canary", "status", "step_index", "weight", "reason", "detail_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    stable: str
    canary: str
    status: str
    step_index: int
    weight: float
    reason: str
    detail_json: str
    def __init__(self, model: _Optional[str] = ..., stable: _Optional[str] = ..., canary: _Optional[str] = ..., status: _Optional[str] = ..., step_index: _Optional[int] = ..., weight: _Optional[float] = ..., reason: _Optional[str] = ..., detail_json: _Optional[str] = ...) -> None: ...

class AuditRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("ts", "who", "action", "model", "detail_json", "reason")
    TS_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ts: float
    who: str
    action: str
    model: str
    detail_json: str
    reason: str
    def __init__(self, ts: _Optional[float] = ..., who: _Optional[str] = ..., action: _Optional[str] = ..., model: _Optional[str] = ..., detail_json: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class DriftRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("status", "report_json")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    status: str
    report_json: str
    def __init__(self, status: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class FeedbackItem(_message.Message):
    __slots__ = ("id", "number", "text", "json")
    ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    number: float
    text: str
    json: str
    def __init__(self, id: _Optional[str] = ..., number: _Optional[float] = ..., text: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model", "feedback")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    model: str
    feedback: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    def __init__(self, model: _Optional[str] = ..., feedback: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "unknown", "late", "invalid")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicate: int
    unknown: int
    late: int
    invalid: int
    def __init__(self, accepted: _Optional[int] = ..., duplicate: _Optional[int] = ..., unknown: _Optional[int] = ..., late: _Optional[int] = ..., invalid: _Optional[int] = ...) -> None: ...

class PerformanceRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class PerformanceReport(_message.Message):
    __slots__ = ("labelled", "accuracy", "report_json")
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    labelled: int
    accuracy: float
    report_json: str
    def __init__(self, labelled: _Optional[int] = ..., accuracy: _Optional[float] = ..., report_json: _Optional[str] = ...) -> None: ...
