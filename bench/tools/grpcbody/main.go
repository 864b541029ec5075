// Command grpcbody turns an OpenIM JSON body into the gRPC request body h2load posts: the 5-byte
// gRPC message prefix (not compressed, big-endian length) followed by the protobuf encoding of the
// command's request message, parsed with protojson (OpenIM's keys are the protos' json_name;
// unknown keys are discarded).
//
// Usage: grpcbody COMMAND JSON_FILE OUT_FILE
package main

import (
	"encoding/binary"
	"fmt"
	"os"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: grpcbody COMMAND JSON_FILE OUT_FILE")
		os.Exit(2)
	}
	var msg proto.Message
	switch os.Args[1] {
	case "callbackBeforeCreateGroupCommand":
		msg = &pb.BeforeCreateGroupRequest{}
	case "callbackAfterQuitGroupCommand":
		msg = &pb.AfterQuitGroupRequest{}
	default:
		fmt.Fprintln(os.Stderr, "grpcbody: unknown command", os.Args[1])
		os.Exit(2)
	}
	in, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcbody:", err)
		os.Exit(1)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(in, msg); err != nil {
		fmt.Fprintln(os.Stderr, "grpcbody: parse:", err)
		os.Exit(1)
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcbody: encode:", err)
		os.Exit(1)
	}
	out := make([]byte, 5, 5+len(b))
	binary.BigEndian.PutUint32(out[1:], uint32(len(b)))
	out = append(out, b...)
	if err := os.WriteFile(os.Args[3], out, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "grpcbody:", err)
		os.Exit(1)
	}
	fmt.Printf("%d bytes (protobuf %d)\n", len(out), len(b))
}
