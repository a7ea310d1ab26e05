"""hcp-flash: build the deployable firmware tree and put it on evaluator boards."""
