"""Pure market policy: the live provider registry and routing. No sockets, no clock."""
