// A grpc-js client that knows nothing of callstate: it streams shop.v1.Shop/Track and cancels
// the stream after a few events. Prints one JSON line: the events it got, the call id the
// server's headers carried, and the status the cancel ended with.
// usage: node track_cancel.js TARGET PROTO_ROOT CANCEL_AFTER
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, protoRoot, cancelAfter] = process.argv.slice(2);
const def = loader.loadSync('shop/v1/shop.proto', { includeDirs: [protoRoot] });
const shop = grpc.loadPackageDefinition(def).shop.v1;
const client = new shop.Shop(target, grpc.credentials.createInsecure());
const deadline = new Date(Date.now() + 30000);
let received = 0;
let callId = null;
const call = client.Track({ order_id: 'js-1' }, { deadline });
call.on('metadata', (md) => { callId = (md.get('callstate-call-id') || [null])[0]; });
call.on('data', () => {
  received += 1;
  if (received === Number(cancelAfter)) call.cancel();
});
let reported = false;
function report(fields) {   // grpc-js ends a cancelled stream with 'error', then 'end': report once
  if (reported) return;
  reported = true;
  console.log(JSON.stringify({ received, callId, ...fields }));
  client.close();
}
call.on('error', (err) => report({ code: err.code, details: err.details }));
call.on('end', () => report({ code: 0 }));
