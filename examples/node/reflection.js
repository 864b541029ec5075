'use strict';

// Server reflection (grpc.reflection.v1 and v1alpha, from @grpc/reflection) that tools such as
// grpcurl can use fully, not only for `list`.
//
// @grpc/reflection serves the descriptors that protobufjs builds from the .proto files, and
// protobufjs 7 writes three things differently from protoc:
//   - the implicit entry message of `map<K, V> options` is named `Options`, not `OptionsEntry`:
//     Go's descriptor check (grpcurl, grpcui, evans) then rejects the whole file with "is an
//     invalid map: incorrect implicit map entry name" (fullstorydev/grpcurl#519), so `describe`
//     and calls fail. The contract has such maps (BeforeMsgModifyResponse.options, and
//     HealthListResponse.statuses in health.proto);
//   - `json_name` is dropped, so grpcurl would expect `userId` instead of OpenIM's `userID`;
//   - `optional` fields lose their proto3_optional flag and show up as `oneof _remark`.
// So the descriptors are built here from the same .proto files, repaired from what protobufjs
// parsed, and handed to @grpc/reflection. This only affects what reflection describes: the
// server's own encoding and decoding (proto-loader) is unaffected and correct.

const fs = require('node:fs');
const path = require('node:path');
const protobuf = require('protobufjs');
const { FileDescriptorProto } = require('protobufjs/ext/descriptor');
const { ReflectionService } = require('@grpc/reflection');

/** protoc's name for the entry message of map field `name`: `foo_bar` -> `FooBarEntry`. */
function mapEntryName(name) {
  return `${name.replace(/(?:^|_+)(.)/g, (_, c) => c.toUpperCase()).replace(/_+$/, '')}Entry`;
}

/** Repairs `message` (a DescriptorProto built from `type`) and its nested messages in place. */
function repairMessage(message, type) {
  for (const nested of message.nestedType) {
    const nestedType = type.nested && type.nested[nested.name];
    if (nestedType instanceof protobuf.Type) repairMessage(nested, nestedType);
  }
  for (const field of message.field) {
    const source = type.fields[field.name];
    if (!source) continue;
    const options = source.options || {};
    if (options.json_name) field.jsonName = options.json_name;
    if (options.proto3_optional) field.proto3Optional = true;
    if (source.map) {
      const entry = message.nestedType.find(
        (nested) => nested.options && nested.options.mapEntry && nested.name === field.typeName,
      );
      if (entry) field.typeName = entry.name = mapEntryName(field.name);
    }
  }
}

/** Serialised FileDescriptorProtos of `files`, found in `includeDirs`, as protoc would write them. */
function fileDescriptors(files, includeDirs) {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) =>
    includeDirs.map((dir) => path.join(dir, target)).find((full) => fs.existsSync(full)) ?? target;
  root.loadSync(files, { keepCase: true }); // keepCase: the descriptors carry the .proto names
  root.resolveAll();
  return root.toDescriptor('proto3').file.map((file) => {
    for (const message of file.messageType) {
      repairMessage(message, root.lookupType(`${file.package}.${message.name}`));
    }
    return FileDescriptorProto.encode(file).finish();
  });
}

/** Adds reflection describing `files` (paths relative to one of `includeDirs`) to `server`. */
function addReflection(server, files, includeDirs) {
  // @grpc/reflection reads only the `fileDescriptorProtos` of a package definition's entries.
  const definition = { files: { fileDescriptorProtos: fileDescriptors(files, includeDirs) } };
  new ReflectionService(definition).addToServer(server);
}

module.exports = { addReflection };
