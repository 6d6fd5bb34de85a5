// grpc-js against a stand-in of tests/protos/audit33/ledger/v1/ledger.proto (tests/test_audit33_any.py):
// the calls named on the command line run at once; each prints one JSON line when it ends
// (its name, the status code and details, the callstate-code trailer, the messages it got).
// usage: node ledger_calls.js TARGET PROTO_ROOT DRIFTED_ROOT NAME...
//   in-cancel-N    Import (client stream), scripted to complete: two messages, then call.cancel()
//                  (20 + 30 N ms after the server's headers: each on its own, not all in one read)
//   both-cancel-N  Reconcile (bidi), one message each way, then call.cancel() with the stream open
//   in-deadline    Import with a 1.5 s deadline (a busy server dispatches it well before) and one
//                  message, never half-closed
//   in-tenant      Import with metadata x-tenant: blocked (a rule aborts those with 4403)
//   drifted-post   Post from a drifted .proto (Entry.id as bytes) with an id that is not UTF-8
//   drifted-in     Import from the drifted .proto: one good message, then one such id
//   drifted-void   Void, a method of the drifted .proto the served one lacks
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, protoRoot, driftedRoot, ...names] = process.argv.slice(2);
const clients = [];
function service(root, options) {   // a client of its own: { 'grpc.use_local_subchannel_pool': 1 } gives it its own connection
  const def = loader.loadSync('ledger/v1/ledger.proto', { includeDirs: [root], longs: String, enums: String });
  const client = new (grpc.loadPackageDefinition(def).ledger.v1.Ledger)(target, grpc.credentials.createInsecure(), options);
  clients.push(client);
  return client;
}
const ledger = service(protoRoot);
const drifted = service(driftedRoot);
let open = names.length;

function md(name, extra) {
  const m = new grpc.Metadata();
  m.set('callstate-call-id', `a33-js-${name}`);
  for (const [k, v] of Object.entries(extra || {})) m.set(k, v);
  return m;
}
function report(name, err, got) {
  const trailer = err && err.metadata ? (err.metadata.get('callstate-code')[0] || null) : null;
  console.log(JSON.stringify({ name, code: err ? err.code : 0, details: err ? err.details : '', trailer, got }));
  if (--open === 0) clients.forEach((c) => c.close());
}
function once(fn) { let done = false; return (...a) => { if (!done) { done = true; fn(...a); } }; }
const deadline = () => new Date(Date.now() + 5000);
const notUtf8 = Buffer.from([0xff, 0xfe, 0x41]);

for (const name of names) {
  const end = once((err, got) => report(name, err, got));
  if (name.startsWith('in-cancel-')) {   // on a connection of its own: the server reads its cancel's frames alone
    const call = service(protoRoot, { 'grpc.use_local_subchannel_pool': 1 }).Import(md(name, { 'callstate-script': '{"outcome": "complete"}' }), { deadline: deadline() },
                               (err) => end(err));
    // cancelled once the server's headers came (it dispatched the call: a call cancelled before
    // that is never logged), 20 + 30 N ms later
    call.on('metadata', () => setTimeout(() => call.cancel(), 20 + 30 * Number(name.split('-')[2])));
    call.write({ id: '1' });
    call.write({ id: '2' });
  } else if (name.startsWith('both-cancel-')) {
    const call = ledger.Reconcile(md(name, { 'callstate-script': '{"outcome": "complete", "messages": 1}' }),
                                  { deadline: deadline() });
    let got = 0;
    call.on('data', () => { got += 1; call.cancel(); });
    call.on('error', (err) => end(err, got));
    call.on('end', () => end(null, got));
    call.write({ id: '1' });
  } else if (name === 'in-deadline') {
    const call = ledger.Import(md(name), { deadline: new Date(Date.now() + 1500) }, (err) => end(err));
    call.write({ id: '1' });
  } else if (name === 'in-tenant') {
    const call = ledger.Import(md(name, { 'x-tenant': 'blocked' }), { deadline: deadline() }, (err) => end(err));
    call.write({ id: '1' });
    call.end();
  } else if (name === 'drifted-post') {
    drifted.Post({ id: notUtf8 }, md(name), { deadline: deadline() }, (err, reply) => end(err, reply));
  } else if (name === 'drifted-in') {
    const call = drifted.Import(md(name, { 'callstate-script': '{"outcome": "complete"}' }), { deadline: deadline() },
                                (err, reply) => end(err, reply));
    call.write({ id: Buffer.from('ok') });
    call.write({ id: notUtf8 });
    call.end();
  } else if (name === 'drifted-void') {
    drifted.Void({ id: Buffer.from('v') }, md(name), { deadline: deadline() }, (err, reply) => end(err, reply));
  } else {
    throw new Error(`unknown call ${name}`);
  }
}
