//! Neural models used by mugflow stages, one file per model (candle), with weight loading from the
//! real checkpoint formats and key names. Models arrive with the encoder and generation issues.
