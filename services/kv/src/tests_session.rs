//! Tests of the connection commands: HELLO/RESP3, AUTH, CLIENT, SELECT, transactions, pub/sub, SCAN.
