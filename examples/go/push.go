package main

import pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"

// pushHooks implements PushCallbackService. The example has no push policy: every RPC answers
// UNIMPLEMENTED (from the embedded base), so pushes go on unchanged. To title untitled offline
// pushes, say, write BeforeOfflinePush here.
type pushHooks struct {
	pb.UnimplementedPushCallbackServiceServer
}
