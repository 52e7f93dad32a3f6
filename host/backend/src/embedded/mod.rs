//! PLACEHOLDER created by the lead so the host compiles meanwhile: the embedded-backend helper replaces this file entirely.
