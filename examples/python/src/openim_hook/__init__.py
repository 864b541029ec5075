"""Example OpenIM callback hook service for openim-callback-gateway (see ../../README.md)."""
