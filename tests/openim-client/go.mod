module openim-client

go 1.21
