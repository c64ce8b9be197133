"""The small-data route: the softmax head trained on cached features (`softmax`) and the route that
extracts then fits it (`small_data`). Imports everything below features."""
