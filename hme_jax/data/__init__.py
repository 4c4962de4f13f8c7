"""Images and datasets: InkML (``inkml``), paper-domain transforms (``paper``), the image ops of
training, evaluation and prediction (``preprocessing``), the Grain input pipeline
(``input_pipeline``) and the training split in device memory (``device_data``)."""
