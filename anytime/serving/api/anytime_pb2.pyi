from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("encoded", "raw", "budget_ms", "min_exit", "max_exit", "score_threshold", "request_id", "option")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_EXIT_FIELD_NUMBER: _ClassVar[int]
    MAX_EXIT_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPTION_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    budget_ms: float
    min_exit: int
    max_exit: int
    score_threshold: float
    request_id: str
    option: str
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., budget_ms: _Optional[float] = ..., min_exit: _Optional[int] = ..., max_exit: _Optional[int] = ..., score_threshold: _Optional[float] = ..., request_id: _Optional[str] = ..., option: _Optional[str] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2", "score", "category_id", "category_name")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_NAME_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    category_id: int
    category_name: str
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ..., score: _Optional[float] = ..., category_id: _Optional[int] = ..., category_name: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "inference_ms", "total_ms", "budget_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    inference_ms: float
    total_ms: float
    budget_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., budget_ms: _Optional[float] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("detections", "exit", "exits_available", "timing", "budget_met", "endpoint", "request_id", "error_code", "error_message", "final", "image_size")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    EXITS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MET_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    exit: int
    exits_available: _containers.RepeatedScalarFieldContainer[int]
    timing: Timing
    budget_met: bool
    endpoint: str
    request_id: str
    error_code: int
    error_message: str
    final: bool
    image_size: int
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., exit: _Optional[int] = ..., exits_available: _Optional[_Iterable[int]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., budget_met: _Optional[bool] = ..., endpoint: _Optional[str] = ..., request_id: _Optional[str] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., final: _Optional[bool] = ..., image_size: _Optional[int] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExitProfile(_message.Message):
    __slots__ = ("exit", "p50_ms", "p95_ms", "image_size")
    EXIT_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    exit: int
    p50_ms: float
    p95_ms: float
    image_size: int
    def __init__(self, exit: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., image_size: _Optional[int] = ...) -> None: ...

class EndpointInfo(_message.Message):
    __slots__ = ("address", "ready", "profile", "prior", "option_profile")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    OPTION_PROFILE_FIELD_NUMBER: _ClassVar[int]
    address: str
    ready: bool
    profile: _containers.RepeatedCompositeFieldContainer[ExitProfile]
    prior: str
    option_profile: _containers.RepeatedCompositeFieldContainer[ExitProfile]
    def __init__(self, address: _Optional[str] = ..., ready: _Optional[bool] = ..., profile: _Optional[_Iterable[_Union[ExitProfile, _Mapping]]] = ..., prior: _Optional[str] = ..., option_profile: _Optional[_Iterable[_Union[ExitProfile, _Mapping]]] = ...) -> None: ...

class Option(_message.Message):
    __slots__ = ("name", "image_size", "exit", "gmacs", "ap")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    GMACS_FIELD_NUMBER: _ClassVar[int]
    AP_FIELD_NUMBER: _ClassVar[int]
    name: str
    image_size: int
    exit: int
    gmacs: float
    ap: float
    def __init__(self, name: _Optional[str] = ..., image_size: _Optional[int] = ..., exit: _Optional[int] = ..., gmacs: _Optional[float] = ..., ap: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("exits", "image_size", "class_names", "category_ids", "endpoints", "default_budget_ms", "execution", "max_image_size", "options")
    EXITS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_IDS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    exits: _containers.RepeatedScalarFieldContainer[int]
    image_size: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    category_ids: _containers.RepeatedScalarFieldContainer[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointInfo]
    default_budget_ms: float
    execution: str
    max_image_size: int
    options: _containers.RepeatedCompositeFieldContainer[Option]
    def __init__(self, exits: _Optional[_Iterable[int]] = ..., image_size: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., category_ids: _Optional[_Iterable[int]] = ..., endpoints: _Optional[_Iterable[_Union[EndpointInfo, _Mapping]]] = ..., default_budget_ms: _Optional[float] = ..., execution: _Optional[str] = ..., max_image_size: _Optional[int] = ..., options: _Optional[_Iterable[_Union[Option, _Mapping]]] = ...) -> None: ...
