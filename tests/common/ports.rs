//! Loopback ports held across restarts: a test that kills a server and
//! starts it again on the same port must not lose that port to another
//! process in between.
//!
//! A [`PortReservation`] is a socket bound (never listening) with
//! `SO_REUSEADDR`. Linux lets a server that also sets `SO_REUSEADDR` (tokio's
//! `TcpListener::bind` does) bind and listen on the same address while it
//! exists, yet never hands the port out to a port-0 bind or an outgoing
//! connection's local port. Nothing is accepted on it, so while the server is
//! down, connections are refused as they would be on a free port.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// A loopback port kept out of the OS's hands for as long as this lives.
pub struct PortReservation {
    /// The reserved address (127.0.0.1 and the port).
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

impl PortReservation {
    /// Reserves a free loopback port (port 0, read back).
    pub fn new() -> PortReservation {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        PortReservation {
            addr,
            _socket: socket,
        }
    }

    /// A listener on the reserved port, for a server in the test process.
    pub fn listen(&self) -> TcpListener {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap();
        socket.listen(1024).unwrap()
    }
}
