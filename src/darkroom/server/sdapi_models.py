"""A1111 `/sdapi/v1` request and response bodies with A1111 1.10's API defaults (every request field optional).

Unknown fields are ignored, as A1111 does; fields darkroom cannot honour are checked in `sdapi.py` and answered
with a clear 400 when they ask for something other than their default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ProcessingBase(_Request):
    """Fields shared by txt2img and img2img (A1111's StableDiffusionProcessing)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = 0.75
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Txt2ImgRequest(ProcessingBase):
    """POST /sdapi/v1/txt2img (StableDiffusionTxt2ImgProcessingAPI)."""

    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstpass_image: str | None = None


class Img2ImgRequest(ProcessingBase):
    """POST /sdapi/v1/img2img (StableDiffusionImg2ImgProcessingAPI)."""

    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    """txt2img / img2img answer: base64 PNGs, the request echoed, and `info` as a JSON string."""

    images: list[str] | None = None
    parameters: dict[str, Any]
    info: str


class PngInfoRequest(_Request):
    image: str = ""


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool = False
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class ErrorResponse(BaseModel):
    """A1111's error body."""

    error: str
    detail: str = ""
    body: str = ""
    errors: str = ""


class ExtrasBaseRequest(_Request):
    """A1111's extras options (modules/api/models.py); face restoration is refused when asked for (> 0)."""

    resize_mode: Literal[0, 1] = Field(0, description="0: scale by upscaling_resize; 1: to upscaling_resize_w × _h")
    show_extras_results: bool = Field(True, description="Accepted; the API always returns the images (as A1111)")
    gfpgan_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscaling_resize: float = Field(2, ge=1, le=8, description="Scale factor (resize_mode 0)")
    upscaling_resize_w: int = Field(512, ge=1, description="Target width (resize_mode 1)")
    upscaling_resize_h: int = Field(512, ge=1, description="Target height (resize_mode 1)")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop to the target size (centred)")
    upscaler_1: str = Field("None", description="Main upscaler: a name from GET /sdapi/v1/upscalers")
    upscaler_2: str = Field("None", description="Secondary upscaler, blended in by extras_upscaler_2_visibility")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = Field(False, description="Accepted (order against face restoration, which is absent)")


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="The image, base64 (or a data: URL)")


class FileData(BaseModel):
    data: str = Field(description="Base64 of the file")
    name: str = Field("", description="File name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list, description="Images to process, base64")  # noqa: N815


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]
