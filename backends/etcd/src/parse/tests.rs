//! Tests of URL and environment parsing.
