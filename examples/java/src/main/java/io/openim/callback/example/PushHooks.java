package io.openim.callback.example;

import io.openim.callback.v1.PushCallbackServiceGrpc;

/**
 * Push callbacks: the policy has none, so every RPC is the generated base's UNIMPLEMENTED, which
 * the gateway takes as "continue unchanged". Served anyway so that health and reflection list it
 * and there is a place to add a push hook.
 */
final class PushHooks extends PushCallbackServiceGrpc.PushCallbackServiceImplBase {}
