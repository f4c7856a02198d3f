import torch


def test_fixture_model_is_accurate(digits_model, digits_test):
    with torch.no_grad():
        acc = (digits_model(digits_test.x).argmax(1) == digits_test.y).float().mean().item()
    assert acc > 0.93
