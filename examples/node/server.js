'use strict';

// Example OpenIM callback hook service for openim-callback-gateway, in plain Node.js.
//
// The gateway turns each OpenIM webhook into a gRPC call of one of the six services of
// `openim.callback.v1` (proto/openim/callback/v1/*.proto). This server implements the example
// policy of examples/POLICY.md:
//   - before-callbacks: reject blocked words, mask them, give defaults; a reply says "allow" by
//     leaving every field unset, "reject" by setting `rejection`, "modify" by setting only the
//     fields to change;
//   - after-callbacks: print `after <command> <delivery-id>` on stdout and acknowledge;
//   - every other RPC is simply left out of the implementation objects, so grpc-js answers
//     UNIMPLEMENTED and the gateway lets OpenIM continue unchanged.
//
// Usage: node server.js PORT   (serves on 127.0.0.1:PORT)

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation, protoPath: healthProtoPath } = require('grpc-health-check');
const { addReflection } = require('./reflection');

// ---------------------------------------------------------------------------------------------
// Loading the contract. The .proto files are read at start-up from the repository (no generated
// code to keep in sync), so a changed proto takes effect on the next start.

const PROTO_ROOT = path.join(__dirname, '..', '..', 'proto');
const PROTO_DIR = 'openim/callback/v1';
const PROTO_FILES = fs
  .readdirSync(path.join(PROTO_ROOT, PROTO_DIR))
  .filter((name) => name.endsWith('.proto'))
  .map((name) => `${PROTO_DIR}/${name}`);

// How messages look in JavaScript. These options decide the shape of every `call.request` and of
// every object a handler returns, so they are worth reading once:
const LOADER_OPTIONS = {
  // Field names exactly as written in the .proto (`face_url`, `group_name`), not camelCase
  // (`faceUrl`) and not the JSON names (`faceURL`). Replies use the same names; note that a
  // misspelt key in a reply object is silently dropped by the encoder.
  keepCase: true,
  // int64 / uint64 fields (create_time, send_time, seq...) as decimal strings: a JS number would
  // lose precision above 2^53. Replies may use a string or a number.
  longs: String,
  // Enum values by name (the contract has no enums today; this keeps future ones readable).
  enums: String,
  // Unset proto3 fields read as in every other language: '' / 0 / false, [] for repeated, {} for
  // maps, null for messages. So `req.ex === ''` works although proto3 never sends an empty
  // string. `optional` fields are the exception: they stay `undefined` when absent.
  defaults: true,
};

const packageDefinition = protoLoader.loadSync(PROTO_FILES, {
  ...LOADER_OPTIONS,
  includeDirs: [PROTO_ROOT],
});
const callbackV1 = grpc.loadPackageDefinition(packageDefinition).openim.callback.v1;

const SERVICES = [
  'MessageCallbackService',
  'PushCallbackService',
  'UserCallbackService',
  'FriendCallbackService',
  'GroupCallbackService',
  'ConversationCallbackService',
];

// ---------------------------------------------------------------------------------------------
// The policy's constants (examples/POLICY.md).

const BLOCKED_WORDS = ['forbidden', 'spam'];
const REJECT_CODE = 20001; // OpenIM's business error range is 20001-29999
const MASK = '***';
const DEFAULT_AVATAR = 'https://example.com/avatar/default.png';
const GROUP_TAG = '{"createdVia":"openim-callback-gateway"}';

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const BLOCKED_PATTERN = new RegExp(BLOCKED_WORDS.map(escapeRegExp).join('|'), 'gi');

/** The first blocked word (in list order) that `text` contains, ignoring case, or undefined. */
function blockedWord(text) {
  const lower = text.toLowerCase();
  return BLOCKED_WORDS.find((word) => lower.includes(word));
}

/** `text` with every blocked word, whatever its case, replaced by the mask. */
function mask(text) {
  return text.replace(BLOCKED_PATTERN, MASK);
}

/** `value` (parsed JSON) with the blocked words masked in every string inside it. */
function maskStrings(value) {
  if (typeof value === 'string') return mask(value);
  if (Array.isArray(value)) return value.map(maskStrings);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, maskStrings(item)]));
  }
  return value;
}

/**
 * A message element such as `{"content":"hello"}` with its blocked words masked, as compact JSON,
 * or undefined when nothing changed or it is not a JSON object (OpenIM only accepts an object).
 * JSON.parse keeps key order, but turns numbers into doubles (integers above 2^53 lose digits);
 * that only matters for content we rewrite anyway.
 */
function maskContentJson(content) {
  let element;
  try {
    element = JSON.parse(content);
  } catch {
    return undefined;
  }
  if (element === null || typeof element !== 'object' || Array.isArray(element)) return undefined;
  const original = JSON.stringify(element);
  const masked = JSON.stringify(maskStrings(element));
  return masked === original ? undefined : masked;
}

// ---------------------------------------------------------------------------------------------
// Metadata and replies.

/** The first value of a metadata key the gateway sends, or '-' when absent. */
function meta(call, key) {
  const [value] = call.metadata.get(key);
  return value === undefined || value === '' ? '-' : String(value);
}

/** Logs a before-callback decision with OpenIM's operation id (to stderr: stdout is for events). */
function logDecision(call, decision, reason) {
  const command = meta(call, 'openim-callback-command');
  const operationId = meta(call, 'openim-operation-id');
  console.error(`before ${command} operationID=${operationId} ${decision}: ${reason}`);
}

/** A reply that rejects the operation: the gateway answers OpenIM with nextCode 1 and these. */
function reject(message, word) {
  return { rejection: { code: REJECT_CODE, message, detail: word } };
}

// An empty object is "allow": every field unset keeps OpenIM's value. Fields of a reply that are
// `optional` in the proto are sent only when the reply object has them, so set just what you
// change.
const ALLOW = {};

/** Before-callback handlers are written as `(request, call) => reply`; this adapts them. */
function unary(handler) {
  return (call, done) => {
    try {
      done(null, handler(call.request, call));
    } catch (err) {
      // An error status makes the gateway apply its configured failure policy for the command.
      console.error(`handler failed: ${err.stack ?? err}`);
      done({ code: grpc.status.INTERNAL, details: String(err.message ?? err) });
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Before-callbacks of the policy. Any before RPC not listed here is not implemented.

/** BeforeSendSingleMsg / BeforeSendGroupMsg: reject a message that contains a blocked word. */
const rejectBlockedMessage = unary((req, call) => {
  const word = blockedWord(req.content);
  if (word) {
    logDecision(call, 'reject', `blocked word "${word}"`);
    return reject('message contains a blocked word', word);
  }
  logDecision(call, 'allow', 'no blocked word');
  return ALLOW;
});

const beforeHandlers = {
  MessageCallbackService: {
    BeforeSendSingleMsg: rejectBlockedMessage,
    BeforeSendGroupMsg: rejectBlockedMessage,

    // Mask blocked words inside the message element; `content` must stay a JSON object string.
    BeforeMsgModify: unary((req, call) => {
      const content = maskContentJson(req.content);
      if (content === undefined) {
        logDecision(call, 'allow', 'nothing to mask');
        return ALLOW;
      }
      logDecision(call, 'modify', 'blocked words masked');
      return { content };
    }),
  },

  FriendCallbackService: {
    BeforeSetFriendRemark: unary((req, call) => {
      const remark = mask(req.remark);
      if (remark === req.remark) {
        logDecision(call, 'allow', 'nothing to mask');
        return ALLOW;
      }
      logDecision(call, 'modify', 'blocked words masked');
      return { remark };
    }),
  },

  UserCallbackService: {
    // OpenIM replaces the whole list with a non-empty reply list, so return every user.
    BeforeUserRegister: unary((req, call) => {
      if (req.users.every((user) => user.face_url !== '')) {
        logDecision(call, 'allow', 'every user has an avatar');
        return ALLOW;
      }
      logDecision(call, 'modify', 'default avatar given');
      return {
        users: req.users.map((user) =>
          user.face_url === '' ? { ...user, face_url: DEFAULT_AVATAR } : user,
        ),
      };
    }),
  },

  GroupCallbackService: {
    BeforeCreateGroup: unary((req, call) => {
      const word = blockedWord(req.group_name);
      if (word) {
        logDecision(call, 'reject', `blocked word "${word}"`);
        return reject('group name contains a blocked word', word);
      }
      if (req.ex === '') {
        logDecision(call, 'modify', 'ex tagged');
        return { ex: GROUP_TAG };
      }
      logDecision(call, 'allow', 'ex already set');
      return ALLOW;
    }),
  },

  PushCallbackService: {},
  ConversationCallbackService: {},
};

// ---------------------------------------------------------------------------------------------
// After-callbacks: notifications, acknowledged with the empty response. An error status instead
// would make the gateway retry the delivery (spooled events keep the same delivery id across
// retries: use it to make a real handler idempotent).

function afterEvent(call, done) {
  const command = meta(call, 'openim-callback-command');
  const deliveryId = meta(call, 'openim-delivery-id'); // absent ('-') for `delivery: sync`
  // One write per line: stdout to a pipe or file is synchronous in Node on Linux, so each line is
  // out before the reply is sent.
  process.stdout.write(`after ${command} ${deliveryId}\n`);
  done(null, {});
}

/** The implementation object of a service: its policy handlers plus every `After*` method. */
function implementation(serviceName) {
  const impl = { ...beforeHandlers[serviceName] };
  for (const method of Object.keys(callbackV1[serviceName].service)) {
    if (method.startsWith('After')) impl[method] = afterEvent;
  }
  return impl;
}

// ---------------------------------------------------------------------------------------------
// Serving.

function main() {
  const port = Number(process.argv[2] ?? process.env.PORT);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error('usage: node server.js PORT');
    process.exit(2);
  }

  const server = new grpc.Server();
  for (const name of SERVICES) {
    server.addService(callbackV1[name].service, implementation(name));
  }

  // grpc.health.v1: SERVING for the whole server ('') and for each callback service.
  const fullNames = SERVICES.map((name) => `openim.callback.v1.${name}`);
  const health = new HealthImplementation(
    Object.fromEntries(['', ...fullNames].map((name) => [name, 'SERVING'])),
  );
  health.addToServer(server);

  // Server reflection (v1 and v1alpha), so `grpcurl -plaintext 127.0.0.1:PORT list` works. It
  // describes the callback protos and health.proto (which grpc-health-check ships).
  const healthRoot = path.resolve(path.dirname(healthProtoPath), '..', '..');
  addReflection(
    server,
    [...PROTO_FILES, path.relative(healthRoot, healthProtoPath)],
    [PROTO_ROOT, healthRoot],
  );

  server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) {
      console.error(`cannot listen on 127.0.0.1:${port}: ${err.message}`);
      process.exit(1);
    }
    process.stdout.write(`listening on 127.0.0.1:${port}\n`);
  });

  // Clean exit on SIGTERM / SIGINT: report NOT_SERVING, let in-flight calls finish, then stop.
  // Health Watch streams never finish by themselves, so force the shutdown after a grace period.
  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    console.error(`${signal}: shutting down`);
    for (const name of ['', ...fullNames]) health.setStatus(name, 'NOT_SERVING');
    const force = setTimeout(() => {
      server.forceShutdown();
      process.exit(0);
    }, 5000);
    force.unref();
    server.tryShutdown(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main();
