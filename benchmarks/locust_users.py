"""Locustfile of `benchmarks/run.py locust`: CallstateUser beside a bare Locust gRPC user,
in one Locust run against one callstate server, both making calls that complete at once.

The bare user is Locust's documented gRPC recipe: a raw generated stub on a channel with a
client interceptor that fires Locust's `request` event (the recipe uses the grpc-interceptor
package; grpc's own UnaryUnaryClientInterceptor does the same here without it).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import callstate.locust   # first: switches grpc to gevent, before any channel

import grpc
from locust import User, constant, task

from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import new_call_id

BARE_TYPE = "grpc"


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, environment: Any) -> None:
        self.env = environment

    def intercept_unary_unary(self, continuation: Callable[..., Any], call_details: Any, request: Any) -> Any:
        response = None
        exception = None
        start = time.perf_counter()
        response_length = 0
        try:
            response = continuation(call_details, request)
            response_length = response.result().ByteSize()
        except grpc.RpcError as e:
            exception = e
        self.env.events.request.fire(request_type=BARE_TYPE, name=call_details.method,
                                     response_time=(time.perf_counter() - start) * 1000,
                                     response_length=response_length, response=response, context=None,
                                     exception=exception)
        return response


class BareGrpcUser(User):
    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        channel = grpc.insecure_channel(self.host)
        self.stub = pb_grpc.EmulatorStub(grpc.intercept_channel(channel, LocustInterceptor(environment)))
        self.script = pb.Script(outcome=pb.OUTCOME_COMPLETE)

    @task
    def call(self) -> None:
        self.stub.Call(pb.CallRequest(call_id=new_call_id(), script=self.script))


class CompleteAtOnce(callstate.locust.CallstateUser):
    mix = "complete=100"
    cancel = "none"
