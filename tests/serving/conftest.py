"""Fixtures of the end-to-end serving tests: a module's ``repo`` (each test module exports its own model) served
by a real Triton and gateway, and a stub on it."""

import grpc
import pytest

from anytime.serving.api import anytime_pb2_grpc as pb_grpc
from anytime.serving.stack import ServingStack


@pytest.fixture(scope="module")
def stack(request, repo):
    """The module's ``EXECUTION`` (default: the gateway's default) decides how the gateway runs requests."""
    args = ("--execution", request.module.EXECUTION) if hasattr(request.module, "EXECUTION") else ()
    with ServingStack(repo, gateway_args=args) as s:
        yield s


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.address) as channel:
        yield pb_grpc.DetectorStub(channel)
