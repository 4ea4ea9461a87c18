//! Unit tests of the server without a model: SERVING.md §9 items that apply
//! (the item numbers are quoted in each test), driven through the real
//! tokenizer and the real turn / protocol code.

mod requests;
mod streams;
mod turns;
