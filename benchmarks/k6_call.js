// k6 driving callstate.v1.Emulator/Call as a Go load tool would; the script asks for an
// immediate complete. benchmarks/run.py k6 runs it against callstate serve and a bare
// grpc.aio server alike (both get the same requests).
//   k6 run -e TARGET=127.0.0.1:50051 -e PROTO_DIR=$PWD/protos --vus 64 --duration 3s benchmarks/k6_call.js
// CALL_ID=1: each call sends its id as metadata `callstate-call-id` (what a balancer routes on,
// deploy/nginx); without it the server makes one and returns it in the response headers.
import grpc from 'k6/net/grpc';

const client = new grpc.Client();
client.load([__ENV.PROTO_DIR], 'callstate/v1/callstate.proto');
const request = { script: { outcome: 'OUTCOME_COMPLETE' } };
const withId = __ENV.CALL_ID === '1';
const prefix = `${Date.now().toString(16)}${Math.floor(Math.random() * 1e9).toString(16)}`;

export default function () {
    if (__ITER === 0) {
        client.connect(__ENV.TARGET, { plaintext: true });
    }
    const params = withId ? { metadata: { 'callstate-call-id': `${prefix}-${__VU}-${__ITER}` } } : {};
    const reply = client.invoke('callstate.v1.Emulator/Call', request, params);
    if (reply.status !== grpc.StatusOK) {
        throw new Error(`status ${reply.status}: ${reply.error && reply.error.message}`);
    }
}
