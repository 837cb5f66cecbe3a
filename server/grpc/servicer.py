"""The gRPC inference service: decode, call the core, encode — nothing else.

Handlers are registered by hand (not through the generated base class) so that a request
that is not valid protobuf is answered INVALID_ARGUMENT with a clear message instead of the
framework's generic error, and every method Turnout does not provide answers UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from turnout.protos import inference_pb2 as pb
from turnout.server.auth import GRPC_POLICY, Authorizer, grpc_peer_host
from turnout.server.core import Core
from turnout.server.errors import InvalidInput, Unimplemented
from turnout.server.grpc import failure
from turnout.server.grpc.convert import decode_request, dict_to_message, encode_response

SERVICE = "inference.GRPCInferenceService"


class _BadMessage:
    """Stands in for a request that failed to parse; the handler turns it into an error."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _deserializer(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return _BadMessage(f"malformed {cls.DESCRIPTOR.name}: {exc}")

    return parse


class InferenceServicer:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def ServerLive(self, req: pb.ServerLiveRequest, ctx: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.core.live)

    async def ServerReady(self, req: pb.ServerReadyRequest, ctx: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready())

    async def ModelReady(self, req: pb.ModelReadyRequest, ctx: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.core.model_ready(req.name, req.version))

    async def ServerMetadata(self, req: pb.ServerMetadataRequest, ctx: Any) -> pb.ServerMetadataResponse:
        return dict_to_message(self.core.server_metadata(), pb.ServerMetadataResponse)

    async def ModelMetadata(self, req: pb.ModelMetadataRequest, ctx: Any) -> pb.ModelMetadataResponse:
        meta = self.core.model_metadata(req.name, req.version)
        meta.pop("parameters", None)
        return dict_to_message(meta, pb.ModelMetadataResponse)

    async def ModelInfer(self, req: pb.ModelInferRequest, ctx: Any) -> pb.ModelInferResponse:
        request = decode_request(req)
        routed = self.core.routed(request.model_name)  # metadata work only where a policy decides
        if routed and request.routing_key is None:
            request.routing_key = _metadata_key(ctx)
        resp = await self.core.infer(request)
        if routed:
            ctx.set_trailing_metadata((("x-model-version", resp.model_version),))
        return encode_response(resp)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], ctx: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for req in requests:
            if isinstance(req, _BadMessage):
                yield pb.ModelStreamInferResponse(error_message=req.error)
                continue
            try:
                resp = await self.ModelInfer(req, ctx)
            except Exception as exc:
                yield pb.ModelStreamInferResponse(error_message=failure.answer(exc)[1])
                continue
            yield pb.ModelStreamInferResponse(infer_response=resp)

    async def ModelConfig(self, req: pb.ModelConfigRequest, ctx: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self.core.model_config(req.name, req.version))

    async def ModelStatistics(self, req: pb.ModelStatisticsRequest, ctx: Any) -> pb.ModelStatisticsResponse:
        stats = self.core.statistics(req.name, req.version)
        return dict_to_message({"model_stats": [s.to_json() for s in stats]}, pb.ModelStatisticsResponse)

    async def RepositoryIndex(self, req: pb.RepositoryIndexRequest, ctx: Any) -> pb.RepositoryIndexResponse:
        if req.repository_name:
            raise InvalidInput("Turnout serves one repository; leave repository_name empty")
        resp = pb.RepositoryIndexResponse()
        for e in self.core.index(req.ready):
            resp.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
        return resp

    async def RepositoryModelLoad(
        self, req: pb.RepositoryModelLoadRequest, ctx: Any
    ) -> pb.RepositoryModelLoadResponse:
        if req.parameters:
            raise InvalidInput("load parameters (config override, files) are not supported by Turnout")
        await self.core.load(req.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, req: pb.RepositoryModelUnloadRequest, ctx: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.core.unload(req.model_name)
        return pb.RepositoryModelUnloadResponse()


def _metadata_key(ctx: Any) -> str | None:
    for k, v in ctx.invocation_metadata() or ():
        if k == "x-routing-key":
            return v if isinstance(v, str) else v.decode()
    return None


_UNIMPLEMENTED: dict[str, Any] = {
    "SystemSharedMemoryStatus": pb.SystemSharedMemoryStatusRequest,
    "SystemSharedMemoryRegister": pb.SystemSharedMemoryRegisterRequest,
    "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest,
    "CudaSharedMemoryStatus": pb.CudaSharedMemoryStatusRequest,
    "CudaSharedMemoryRegister": pb.CudaSharedMemoryRegisterRequest,
    "CudaSharedMemoryUnregister": pb.CudaSharedMemoryUnregisterRequest,
    "TraceSetting": pb.TraceSettingRequest,
    "LogSettings": pb.LogSettingsRequest,
}


Handler = Callable[[Any, Any], Any]


def _authorized(fn: Handler, name: str, auth: Authorizer) -> Handler:
    """``fn`` behind the check GRPC_POLICY names for method ``name`` (``fn`` itself where
    the check cannot refuse: inference without --auth-infer costs nothing)."""
    need = GRPC_POLICY[f"/{SERVICE}/{name}"]
    if not auth.enforces(need):
        return fn

    def check(ctx: Any) -> None:
        authorization = None
        for k, v in ctx.invocation_metadata() or ():
            if k == "authorization":
                authorization = v if isinstance(v, str) else v.decode("latin-1")
        auth.require(need, authorization, grpc_peer_host(ctx.peer()))

    if name == "ModelStreamInfer":

        async def stream(requests: Any, ctx: Any) -> Any:
            try:
                check(ctx)
            except Exception as exc:
                await failure.abort(ctx, exc)
            async for resp in fn(requests, ctx):
                yield resp

        return stream

    async def unary(req: Any, ctx: Any) -> Any:
        check(ctx)
        return await fn(req, ctx)

    return unary


def _unary(
    fn: Callable[[Any, Any], Awaitable[Any]],
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        if isinstance(req, _BadMessage):
            await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, req.error)
        try:
            return await fn(req, ctx)
        except Exception as exc:
            await failure.abort(ctx, exc)

    return handler


def _unimplemented(method: str) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(
            f"{method} is not implemented by Turnout (no shared-memory, trace or log settings extensions)"
        )

    return handler


def make_handlers(core: Core, auth: Authorizer) -> dict[str, grpc.RpcMethodHandler]:
    """Every method of the inference service, each behind its GRPC_POLICY entry."""
    s = InferenceServicer(core)
    unary = {
        "ServerLive": (s.ServerLive, pb.ServerLiveRequest),
        "ServerReady": (s.ServerReady, pb.ServerReadyRequest),
        "ModelReady": (s.ModelReady, pb.ModelReadyRequest),
        "ServerMetadata": (s.ServerMetadata, pb.ServerMetadataRequest),
        "ModelMetadata": (s.ModelMetadata, pb.ModelMetadataRequest),
        "ModelInfer": (s.ModelInfer, pb.ModelInferRequest),
        "ModelConfig": (s.ModelConfig, pb.ModelConfigRequest),
        "ModelStatistics": (s.ModelStatistics, pb.ModelStatisticsRequest),
        "RepositoryIndex": (s.RepositoryIndex, pb.RepositoryIndexRequest),
        "RepositoryModelLoad": (s.RepositoryModelLoad, pb.RepositoryModelLoadRequest),
        "RepositoryModelUnload": (s.RepositoryModelUnload, pb.RepositoryModelUnloadRequest),
    }
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for name, (fn, req_cls) in unary.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _unary(_authorized(fn, name, auth)),
            request_deserializer=_deserializer(req_cls),
            response_serializer=_serialize,
        )
    for name, unimplemented_cls in _UNIMPLEMENTED.items():
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            _unary(_authorized(_unimplemented(name), name, auth)),
            request_deserializer=_deserializer(unimplemented_cls),
            response_serializer=_serialize,
        )
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        _authorized(s.ModelStreamInfer, "ModelStreamInfer", auth),
        request_deserializer=_deserializer(pb.ModelInferRequest),
        response_serializer=_serialize,
    )
    return handlers


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()
