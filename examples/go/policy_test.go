package main

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	pb "github.com/openim-callback-gateway/examples/go/gen/openim/callback/v1"
)

func TestBlockedWord(t *testing.T) {
	for text, want := range map[string]string{
		"this is SPAM":       "spam",
		"a Forbidden fruit":  "forbidden",
		"spam and forbidden": "forbidden", // the first word as listed, not the first in the text
		"hello":              "",
		"":                   "",
	} {
		if got := blockedWord(text); got != want {
			t.Errorf("blockedWord(%q) = %q, want %q", text, got, want)
		}
	}
}

func TestMaskWords(t *testing.T) {
	for text, want := range map[string]string{
		"Spam, spam and FORBIDDEN eggs": "***, *** and *** eggs",
		"ünïcode spam ✓":                "ünïcode *** ✓",
		"spa":                           "spa",
	} {
		if got := maskWords(text); got != want {
			t.Errorf("maskWords(%q) = %q, want %q", text, got, want)
		}
	}
}

func TestMaskContent(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		changed  bool
	}{
		{`{"content":"no Forbidden words"}`, `{"content":"no *** words"}`, true},
		{`{ "z": 1.50, "content": "buy SPAM <now>", "a": ["spam", true, null], "spam": {} }`,
			`{"z":1.50,"content":"buy *** <now>","a":["***",true,null],"spam":{}}`, true},
		{`{"content":"hello"}`, "", false},
		{`"spam"`, "", false},                // not an object
		{`spam`, "", false},                  // not JSON
		{`{"content":"spam"} {}`, "", false}, // trailing data
	} {
		got, changed := maskContent(tc.in)
		if got != tc.want || changed != tc.changed {
			t.Errorf("maskContent(%q) = %q, %v; want %q, %v", tc.in, got, changed, tc.want, tc.changed)
		}
	}
}

// TestOverGRPC checks a rejection, a modification and the UNIMPLEMENTED default through a real
// (in-memory) gRPC connection.
func TestOverGRPC(t *testing.T) {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	pb.RegisterMessageCallbackServiceServer(srv, messageHooks{})
	pb.RegisterGroupCallbackServiceServer(srv, groupHooks{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()

	msg := pb.NewMessageCallbackServiceClient(conn)
	sent, err := msg.BeforeSendSingleMsg(ctx, &pb.BeforeSendSingleMsgRequest{Content: `{"content":"cheap Spam"}`})
	if err != nil {
		t.Fatal(err)
	}
	if r := sent.GetRejection(); r.GetCode() != rejectCode || r.GetDetail() != "spam" {
		t.Errorf("rejection = %v", r)
	}

	group := pb.NewGroupCallbackServiceClient(conn)
	created, err := group.BeforeCreateGroup(ctx, &pb.BeforeCreateGroupRequest{GroupName: "Gophers"})
	if err != nil {
		t.Fatal(err)
	}
	if created.Ex == nil || created.GetEx() != groupTag || created.GroupName != nil {
		t.Errorf("BeforeCreateGroup = %v", created)
	}

	_, err = group.BeforeJoinGroup(ctx, &pb.BeforeJoinGroupRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("BeforeJoinGroup error = %v, want UNIMPLEMENTED", err)
	}
}
