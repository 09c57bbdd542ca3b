"""The REST gateway: applications call HTTP, every request runs as jobs on the network, paid in credits."""
