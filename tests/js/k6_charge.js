// k6 driving shop.v1.Shop/Charge on the stand-in, with the schema read by reflection (no proto
// in hand). Each VU connects once; every call carries its own call id, so the server's log can
// be matched call by call. The script header makes every fifth call abort with 4321.
import grpc from 'k6/net/grpc';
import { check } from 'k6';

export const options = { vus: 2, iterations: Number(__ENV.CALLS || 20) };
const client = new grpc.Client();

export default function () {
  if (__ITER === 0) {
    client.connect(__ENV.TARGET, { plaintext: true, reflect: true, timeout: '10s' });
  }
  const id = `k6-${__VU}-${__ITER}`;
  const abort = __ITER % 5 === 4;
  const metadata = { 'callstate-call-id': id };
  if (abort) metadata['callstate-script'] = '{"outcome": "abort", "abort_code": 4321}';
  const res = client.invoke('shop.v1.Shop/Charge', { order_id: id, amount: { currency: 'USD', units: 3 } },
                            { metadata, timeout: '10s' });
  check(res, {
    'completed or aborted as scripted': (r) => abort ? r.status === grpc.StatusAborted : r.status === grpc.StatusOK,
  });
}
