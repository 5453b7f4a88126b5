//! The pgrx layer: SQL functions that check arguments, call the core, talk
//! SPI and raise errors with their SQLSTATEs.

mod append;
mod checks;
mod guard;
mod partition;
mod raise;
